"""OPC UA sessions the way plants expect them: security mode, application certificate, user, node ids.

Everything of Onshore that speaks OPC UA (the bridge, the watchers of ``onshore monitor`` and
``onshore shadow``, the simulated plant) takes its security from here, so there is one way to
do each thing:

- **Security**: ``sign`` or ``sign-encrypt`` (the ``Basic256Sha256`` policy with ``Sign`` or
  ``SignAndEncrypt``) or ``none``, which is refused unless the endpoint's host is loopback: no
  plant beyond this machine is ever driven over an unsigned channel.
- **Application certificate**: a self-signed RSA-2048 X.509 certificate whose subject alternative
  name carries the application's ApplicationUri (``urn:HOST:onshore:NAME``) and the host names,
  made with ``cryptography`` on first use in the party's own folder (``NAME-cert.der``, and
  ``NAME-key.pem`` with mode 0600 in a 0700 folder) and reused after that; an existing key is
  never overwritten, a key that others may read or a certificate for another ApplicationUri is
  refused. (Basic256Sha256 needs RSA: the EC certificates of the consortium's startup kits,
  ``onshore.parties.provision``, cannot serve here.)
- **User**: a username and password from a TOML file only its owner may read (``username`` and
  ``password``), or from ``ONSHORE_OPCUA_USER`` and ``ONSHORE_OPCUA_PASSWORD``; never from the
  command line, where every user of the machine sees it. Without one the session is anonymous.
- **Node ids** in a map: ``ns=2;s=...`` as before, or ``nsu=URI;s=...``, which names the
  namespace by its URI and is resolved against the server's namespace array, so a map survives
  a server that numbers its namespaces differently. A node the server does not have is refused
  before anything is written, naming it and its role.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from onshore.errors import OnshoreError, ValidationError
from onshore.files import read_toml
from onshore.tls import is_loopback

#: The OPC UA security policy Onshore speaks when security is on.
POLICY = "Basic256Sha256"
MODES = ("none", "sign", "sign-encrypt")
USER_ENV, PASSWORD_ENV = "ONSHORE_OPCUA_USER", "ONSHORE_OPCUA_PASSWORD"
CERT_DAYS = 825


def application_uri(name: str, host: str | None = None) -> str:
    """The ApplicationUri of Onshore's OPC UA application ``name`` on ``host`` (default: this host)."""
    return f"urn:{host or socket.gethostname()}:onshore:{name}"


@dataclass(frozen=True)
class Credentials:
    """A user's name and password for an OPC UA session (the password never printed)."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> Credentials:
        """Read ``username`` and ``password`` from a TOML file. Refused, naming the file: a file that
        the group or others may read (``chmod 600`` it), a missing field, an unknown field."""
        path = Path(path)
        _owner_only(path, "credentials file")
        data = read_toml(path, "credentials")
        unknown = set(data) - {"username", "password"}
        if unknown:
            raise ValidationError(f"{path}: unknown field(s) {sorted(unknown)}; allowed: ['password', 'username']")
        for key in ("username", "password"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValidationError(f"{path}: field {key!r} is required and must be a non-empty string")
        return cls(data["username"], data["password"])

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Credentials | None:
        """From ``ONSHORE_OPCUA_USER`` and ``ONSHORE_OPCUA_PASSWORD``; None when neither is set,
        refused when only one is."""
        env = dict(os.environ) if env is None else env
        user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
        if not user and not password:
            return None
        if not user or not password:
            raise ValidationError(f"set both {USER_ENV} and {PASSWORD_ENV} (or neither, for an anonymous session)")
        return cls(user, password)


@dataclass(frozen=True)
class AppCertificate:
    """An OPC UA application instance certificate (DER) and its private key (PEM)."""

    cert: Path
    key: Path
    uri: str

    def fingerprint(self) -> str:
        """SHA-256 of the certificate, hex, as the operator compares it with what the peer shows."""
        return hashlib.sha256(self.cert.read_bytes()).hexdigest()


def _san_uris(der: bytes) -> list[str]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def application_certificate(folder: Path, name: str, uri: str, hosts: list[str] | None = None) -> AppCertificate:
    """The application certificate of ``name`` in ``folder``, made on first use.

    Made: RSA-2048, self-signed, valid for 825 days, ``uri`` as a URI subject alternative name
    with ``localhost``, this host's name and ``hosts`` (names or addresses) beside it, the key
    usages OPC UA asks of an application instance certificate, the key written with mode 0600.
    Refused (``ValidationError``, naming the file and what to do): a key without its certificate
    or the reverse, a key the group or others may read, a certificate for another ApplicationUri
    or one that has expired. Nothing existing is overwritten.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    cert_path, key_path = folder / f"{name}-cert.der", folder / f"{name}-key.pem"
    if cert_path.exists() or key_path.exists():
        if not (cert_path.is_file() and key_path.is_file()):
            have, lack = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
            raise ValidationError(f"{have} exists without {lack}; move it away to make a new pair")
        _owner_only(key_path, "private key")
        der = cert_path.read_bytes()
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise ValidationError(f"{cert_path}: not a DER certificate; move it away to make a new one") from None
        if uri not in _san_uris(der):
            raise ValidationError(f"{cert_path}: made for ApplicationUri {_san_uris(der) or 'none'}, not {uri}; move "
                                  "it and its key away to make a new pair")
        if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
            raise ValidationError(f"{cert_path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}; move it and its "
                                  "key away to make a new pair")
        return AppCertificate(cert_path, key_path, uri)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Onshore"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"onshore {name}")])
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for h in dict.fromkeys(["localhost", socket.gethostname(), "127.0.0.1", *(hosts or [])]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.DER))
    return AppCertificate(cert_path, key_path, uri)


@dataclass(frozen=True)
class Security:
    """How a client secures its OPC UA session.

    ``mode``: ``none``, ``sign`` or ``sign-encrypt``. ``pki``: the folder of this application's
    certificate (needed unless ``none``). ``credentials``: the user, else anonymous.
    ``server_cert``: the server certificate to trust (DER or PEM); without it, the certificate
    the server presents on its endpoint is used, and its fingerprint reported.
    """

    mode: str = "none"
    pki: Path | None = None
    credentials: Credentials | None = None
    server_cert: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValidationError(f"--security {self.mode!r}: use one of {', '.join(MODES)}")
        if self.mode != "none" and self.pki is None:
            raise ValidationError(f"--security {self.mode} needs --pki DIR: the folder of this application's OPC UA "
                                  "certificate (made there on first use)")
        if self.mode == "none" and self.server_cert is not None:
            raise ValidationError("--server-cert pins the server's certificate: it needs --security sign or "
                                  "sign-encrypt")


def endpoint_host(endpoint: str) -> str:
    """The host of an ``opc.tcp://HOST:PORT/...`` endpoint; refuses any other URL, naming it."""
    url = urlparse(endpoint)
    if url.scheme != "opc.tcp" or not url.hostname:
        raise ValidationError(f"endpoint {endpoint!r} must look like opc.tcp://HOST:PORT/PATH")
    return url.hostname


def check_security(endpoint: str, mode: str) -> None:
    """Refuse ``none`` for an endpoint whose host is not loopback (naming it and what to do)."""
    host = endpoint_host(endpoint)
    if mode == "none" and not is_loopback(host):
        raise ValidationError(f"--security none is refused for {endpoint}: {host} is not loopback, and a plant must "
                              f"not be driven over an unsigned channel; use --security sign-encrypt (or sign) with "
                              f"--pki DIR")


async def connect(endpoint: str, security: Security, name: str, say: Any = None, timeout: float = 5) -> Any:
    """A connected ``asyncua.Client`` for ``endpoint`` under ``security``, as application ``name``.

    Refused (``OnshoreError``, naming the endpoint): ``none`` beyond loopback, a server that
    offers no endpoint for the mode asked, a certificate or user the server rejects, an
    unreachable server. ``say`` (a callable) is told the server certificate's fingerprint when
    it was taken from the server rather than pinned.
    """
    import logging

    from asyncua import Client, ua
    from asyncua.crypto import security_policies

    check_security(endpoint, security.mode)
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its warnings (session timeouts) are not the user's
    client = Client(endpoint, timeout=timeout)
    try:
        if security.mode != "none":
            assert security.pki is not None
            uri = application_uri(name)
            mine = application_certificate(security.pki, name, uri)
            client.application_uri = uri
            client.name = f"Onshore {name}"
            mode = (ua.MessageSecurityMode.SignAndEncrypt if security.mode == "sign-encrypt"
                    else ua.MessageSecurityMode.Sign)
            pinned = None
            if security.server_cert is not None:
                if not Path(security.server_cert).is_file():
                    raise ValidationError(f"--server-cert {security.server_cert}: no such file")
                pinned = str(security.server_cert)
            await client.set_security(security_policies.SecurityPolicyBasic256Sha256, str(mine.cert), str(mine.key),
                                      server_certificate=pinned, mode=mode)
            if pinned is None and say is not None:
                theirs = client.security_policy.peer_certificate
                say(f"OPC UA server certificate of {endpoint} (not pinned; pin it with --server-cert): sha256 "
                    f"{hashlib.sha256(theirs).hexdigest() if theirs else 'unknown'}")
        if security.credentials is not None:
            client.set_user(security.credentials.username)
            client.set_password(security.credentials.password)
        await client.connect()
    except OnshoreError:
        raise
    except ua.UaStatusCodeError as e:
        raise OnshoreError(f"the OPC UA server at {endpoint} refused the session: {_status(e)}"
                           + _hint(e)) from None
    except Exception as e:
        why = str(e) or type(e).__name__
        if isinstance(e, TimeoutError) and security.server_cert is not None:
            why += (f" (a server that cannot read what was encrypted for --server-cert {security.server_cert} does "
                    "not answer: check that it is this server's certificate)")
        raise OnshoreError(f"cannot reach the OPC UA server at {endpoint} with --security {security.mode}: "
                           f"{why}") from None
    return client


def _status(e: Exception) -> str:
    code = getattr(e, "code", None)
    if code is not None:
        from asyncua import ua

        return ua.StatusCode(code).name
    return str(e) or type(e).__name__


def _hint(e: Exception) -> str:
    name = _status(e)
    if "User" in name or "Identity" in name:
        return (f" (check the user: --credentials FILE, or {USER_ENV} and {PASSWORD_ENV})")
    if "Security" in name or "Certificate" in name:
        return " (check --security, and that the server trusts this application's certificate)"
    return ""


def parse_node_id(text: str, where: str) -> Any:
    """An ``ns=``/``nsu=``/``i=``/``s=`` node id string parsed; refused, naming ``where``."""
    from asyncua import ua

    try:
        return ua.NodeId.from_string(text)
    except Exception:
        raise ValidationError(f"{where}: {text!r} is not an OPC UA node id; write e.g. \"ns=2;s=plant/state/x\" or "
                              "\"nsu=urn:example:plant;s=plant/state/x\"") from None


async def resolve(client: Any, ids: dict[str, list[str]], where: str = "the map") -> dict[str, list[Any]]:
    """The client's nodes for ``ids`` (role -> node id strings), with ``nsu=`` namespaces resolved
    against the server's namespace array and every node checked to exist in one Read.

    Refused (``ValidationError``): a node id that does not parse, a namespace URI the server does
    not have (listing those it has), a node the server does not have, each naming the node id and
    its role.
    """
    from asyncua import ua

    namespaces: list[str] | None = None
    nodes: dict[str, list[Any]] = {}
    flat: list[tuple[str, str, Any]] = []
    for role, group in ids.items():
        nodes[role] = []
        for text in group:
            nid = parse_node_id(text, f"{where} ({role})")
            uri = getattr(nid, "NamespaceUri", None)
            if uri:
                if namespaces is None:
                    namespaces = list(await client.get_namespace_array())
                if uri not in namespaces:
                    raise ValidationError(f"{where}: node {text} ({role}) names namespace {uri!r}, which the server "
                                          f"does not have; it has {namespaces}")
                nid = ua.NodeId(nid.Identifier, namespaces.index(uri), nid.NodeIdType)
            node = client.get_node(nid)
            nodes[role].append(node)
            flat.append((role, text, node))
    if flat:
        values = await client.read_attributes([n for _, _, n in flat], ua.AttributeIds.NodeClass)
        for (role, text, _), dv in zip(flat, values, strict=True):
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                raise ValidationError(f"{where}: node {text} ({role}) was not found on the server "
                                      f"({dv.StatusCode.name}); check the node id (browse the server with "
                                      "'uals --url ENDPOINT')")
    return nodes


#: UNECE Recommendation 20 common codes of the units Onshore's embodiments use, as OPC UA Part 8
#: asks for EUInformation; a unit not here keeps its text with UnitId -1 ("not known").
UNECE_CODES = {"m": "MTR", "mm": "MMT", "cm": "CMT", "%": "P1", "degC": "CEL", "K": "KEL", "kW": "KWT", "W": "WTT",
               "kg/h": "E93", "m3/h": "MQH", "kPa": "KPA", "kPa gauge": "KPA", "Pa": "PAL", "bar": "BAR", "1": "C62",
               "s": "SEC", "rad": "C81", "rad/s": "2A", "m/s": "MTS", "N": "NEW", "N.m": "NU", "Hz": "HTZ", 
               "rpm": "RPM", "A": "AMP", "V": "VLT"}
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


def eu_information(unit: str) -> Any:
    """The OPC UA ``EUInformation`` of an embodiment's unit text (UnitId from its UNECE code)."""
    from asyncua import ua

    code = UNECE_CODES.get(unit)
    unit_id = -1
    if code is not None:
        unit_id = 0
        for c in code:
            unit_id = (unit_id << 8) | ord(c)
    return ua.EUInformation(NamespaceUri=UNECE_URI, UnitId=unit_id, DisplayName=ua.LocalizedText(unit),
                            Description=ua.LocalizedText(unit))


def _owner_only(path: Path, what: str) -> None:
    """Refuse a secret file (``what``) that is missing or that its group or others may read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such {what}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValidationError(f"{path}: a {what} must be readable by its owner only "
                              f"(mode {stat.S_IMODE(mode):04o}); run 'chmod 600 {path}'")


def read_users(path: Path) -> dict[str, str]:
    """A server's users, ``[users]`` username = "password" in a TOML file only its owner may read.
    Refused, naming the file: a file others may read, no users, a password that is not a string."""
    path = Path(path)
    _owner_only(path, "users file")
    data = read_toml(path, "users")
    users = data.get("users")
    if set(data) != {"users"} or not isinstance(users, dict) or not users:
        raise ValidationError(f"{path}: write one table [users] with username = \"password\" lines")
    for name, pw in users.items():
        if not isinstance(pw, str) or not pw:
            raise ValidationError(f"{path}: [users] {name} must be a non-empty password string")
    return dict(users)
