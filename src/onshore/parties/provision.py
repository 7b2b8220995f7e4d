"""Provisioning: the consortium's certificate authority and one startup kit per party.

As NVIDIA FLARE's startup kits: the provisioner runs once, holds the CA key in ``OUT/ca/`` (keep it
offline), and hands each party a folder with only its own certificate, TLS key, Ed25519 identity
key (a site also its key-encryption key, the coordinator its log key) and everyone's endpoints and
public keys. ``OUT/trust-root.json`` is what an auditor needs: public keys only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from onshore.errors import ValidationError
from onshore.keys.keystore import KeyStore, public_key_b64
from onshore.ledger.witness import Witness
from onshore.parties.consortium import Consortium, Endpoint, is_ip
from onshore.parties.kit import KIT_FILE, KIT_VERSION, load_kit, trust_root

CERT_DAYS = 825


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, cn: str, org: str,
           hosts: list[str]) -> tuple[bytes, bytes]:
    """A certificate for ``cn`` (client and server use), with ``hosts`` as subject alternative names."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(cn)]
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        sans.append(x509.IPAddress(ipaddress.ip_address(h)) if is_ip(h) else x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def provision(consortium: Consortium, out: Path) -> dict[str, Path]:
    """Write the CA and every party's kit under ``out`` (which must not exist or be empty).

    Returns party label -> kit folder. Refuses (ValidationError) an ``out`` that holds anything,
    so that no existing key is ever overwritten.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValidationError(f"{out}: not empty; provision into a new folder (existing keys are never overwritten)")
    org = consortium.name
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{org} consortium CA", org)
    now = dt.datetime.now(dt.UTC)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=CERT_DAYS * 2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(out / "ca" / "ca.key", _pem_key(ca_key), secret=True)
    _write(out / "ca" / "ca.pem", ca_pem)

    parties: list[tuple[str, str, Endpoint | None]] = [("coordinator", "coordinator", consortium.coordinator)]
    parties += [("site", s.name, s.endpoint) for s in consortium.sites]
    parties += [("member", m, None) for m in consortium.members]
    parties += [("witness", w, e) for w, e in consortium.witnesses]
    parties += [("auditor", a, None) for a in consortium.auditors]
    folders: dict[str, Path] = {}
    pub: dict[str, str] = {}
    witnesses: list[Witness] = []
    for kind, name, ep in parties:
        folder = out / (name if kind in ("coordinator",) else f"{kind}-{name}")
        folders[f"{kind}:{name}"] = folder
        cert, key = _issue(ca_key, ca_name, f"{kind}.{name}" if kind != "coordinator" else "coordinator", org,
                           [ep.host] if ep else [])
        _write(folder / "ca.pem", ca_pem)
        _write(folder / "tls.pem", cert)
        _write(folder / "tls.key", key, secret=True)
        if kind == "witness":  # a tlog-witness folder (onshore witness serve), its cosigning key inside
            w = Witness.init(name, folder / "keys")
            pub[f"{kind}:{name}"] = w.vkey
            witnesses.append(w)
            continue
        store = KeyStore.create(folder / "keys", with_kek=kind == "site")
        pub[f"{kind}:{name}"] = public_key_b64(store.public_key())
    coord = consortium.coordinator
    common: dict[str, Any] = {
        "version": KIT_VERSION, "consortium": org, "jurisdiction": consortium.jurisdiction,
        "coordinator": {"url": f"https://{coord.host}:{coord.port}", "key": pub["coordinator:coordinator"]},
        "sites": {s.name: {"jurisdiction": s.jurisdiction, "roles": list(s.roles),
                           "flight": f"grpc+tls://{s.endpoint.host}:{s.endpoint.port}", "key": pub[f"site:{s.name}"]}
                  for s in consortium.sites},
        "members": {m: pub[f"member:{m}"] for m in consortium.members},
        "witnesses": {w: {"url": f"https://{e.host}:{e.port}", "vkey": pub[f"witness:{w}"]}
                      for w, e in consortium.witnesses},
    }
    for label, folder in folders.items():
        kind, _, name = label.partition(":")
        _write(folder / KIT_FILE, json.dumps({**common, "kind": kind, "name": name}, indent=2).encode())
    trust = trust_root(load_kit(folders["coordinator:coordinator"]))
    for w in witnesses:
        w.trust_log(trust.log_vkey, trust.log_origin)
    _write(out / "trust-root.json", (json.dumps(trust.to_json(), indent=2) + "\n").encode())
    return folders
