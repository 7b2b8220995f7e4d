"""The OPC UA security options, the same on every command that talks to a plant (see
``onshore.serve.opcua``): ``--security``, ``--pki``, ``--credentials``, ``--server-cert``.

Passwords never go on the command line (every user of the machine can read it): a client's come
from a file only its owner may read or from ``ONSHORE_OPCUA_USER`` / ``ONSHORE_OPCUA_PASSWORD``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from onshore.cli.inputs import usage

if TYPE_CHECKING:
    from onshore.serve.opcua import Security

SECURITY = typer.Option(
    "sign-encrypt", "--security", metavar="MODE",
    help="sign-encrypt (Basic256Sha256 SignAndEncrypt, the default), sign (Basic256Sha256 Sign), or none: no "
         "security, which must be asked for and is refused unless the endpoint is loopback.")
PKI = typer.Option(
    None, "--pki", metavar="DIR",
    help="Folder of this application's OPC UA certificate and key (self-signed, made there on first use, key mode "
         "0600); needed unless --security none.")
CREDENTIALS = typer.Option(
    None, "--credentials", metavar="FILE",
    help="TOML file with username and password, readable by its owner only (else $ONSHORE_OPCUA_USER and "
         "$ONSHORE_OPCUA_PASSWORD; else an anonymous session).")
SERVER_CERT = typer.Option(
    None, "--server-cert", metavar="CERT",
    help="Trust only this OPC UA server certificate (DER or PEM); without it the one the server presents is used "
         "and its SHA-256 fingerprint printed.")


def client_security(mode: str, pki: Path | None, credentials: Path | None, server_cert: Path | None) -> Security:
    """The client's :class:`Security` from its options. Refused (naming the option): an unknown mode, a
    secured mode without ``--pki``, a credentials file others may read, half the environment pair."""
    # imported here: the options above are on commands whose help must start fast
    from onshore.serve.opcua import MODES, Credentials, Security

    if mode not in MODES:
        raise usage(f"--security {mode!r}: use one of {', '.join(MODES)}")
    creds = Credentials.from_file(credentials) if credentials is not None else Credentials.from_env()
    return Security(mode, pki, creds, server_cert)
