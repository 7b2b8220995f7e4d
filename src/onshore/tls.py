"""TLS for the small HTTP services (``onshore witness serve`` and its client): paths in, settings out.

Kept to two functions so that the consortium's provisioning can hand a party's certificate, key
and CA (its startup folder) to any server or client without touching the services themselves.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any

from onshore.errors import UsageError, ValidationError


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` only; anything else (0.0.0.0, a LAN address) is not: what
    may go without transport security."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _readable(path: Path, option: str) -> str:
    if not Path(path).is_file():
        raise ValidationError(f"{option} {path}: no such file (a PEM certificate or key)")
    return str(path)


def server_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> dict[str, Any]:
    """uvicorn's TLS settings: none at all (plain HTTP) when no path is given; else the server's
    certificate and key, and with ``client_ca`` mutual TLS (a client without a certificate issued by
    that CA fails the handshake). Refuses a certificate without its key, or a CA without both."""
    if cert is None and key is None and client_ca is None:
        return {}
    if cert is None or key is None:
        raise UsageError("give --tls-cert and --tls-key together (and --client-ca for mutual TLS) (see --help)")
    opts: dict[str, Any] = {"ssl_certfile": _readable(cert, "--tls-cert"), "ssl_keyfile": _readable(key, "--tls-key")}
    if client_ca is not None:
        opts |= {"ssl_ca_certs": _readable(client_ca, "--client-ca"), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return opts


def client_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """A client context that trusts only ``ca`` (else the system's CAs) and, for mutual TLS,
    presents ``cert`` and ``key``; None when no path is given (the defaults apply)."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise UsageError("give --tls-cert and --tls-key together (see --help)")
    ctx = ssl.create_default_context(cafile=_readable(ca, "--ca") if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(_readable(cert, "--tls-cert"), _readable(key, "--tls-key"))
    return ctx
