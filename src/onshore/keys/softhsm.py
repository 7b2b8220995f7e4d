"""SoftHSM2 tokens for the demo, the tests and the custody bench: a software PKCS#11 token.

SoftHSM2 (Debian's ``softhsm2``) speaks PKCS#11 exactly as a hardware HSM does, but keeps its
tokens in a folder; :func:`token_store` points the process (``SOFTHSM2_CONF``) at a folder of its
own and :func:`init_token` makes a token there with a random PIN kept in a 0600 file. A copy of that
folder is a copy of the keys: production sites use a hardware or cloud HSM (``docs/custody.md``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from onshore.errors import OnshoreError
from onshore.keys.pkcs11store import CustodyConfig, reset

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def available() -> bool:
    """True when softhsm2 (its PKCS#11 module and softhsm2-util) and python-pkcs11 are installed."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return False
    return Path(MODULE).is_file() and shutil.which("softhsm2-util") is not None


def require() -> None:
    """Refuse (OnshoreError saying what to install) when :func:`available` is False."""
    if not available():
        raise OnshoreError("PKCS#11 custody with SoftHSM2 needs Debian's softhsm2 (apt-get install softhsm2) and "
                           "python-pkcs11 (pip install 'onshore[pkcs11]')")


def token_store(folder: Path) -> Path:
    """Make ``folder`` this process's SoftHSM2 token store (sets ``SOFTHSM2_CONF``); returns the config."""
    require()
    tokens = Path(folder) / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = Path(folder) / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    reset()
    return conf


def init_token(folder: Path, label: str) -> CustodyConfig:
    """Initialise token ``label`` in the store ``folder`` (see :func:`token_store`), its PIN in a 0600 file."""
    pin_file = Path(folder) / "pins" / label
    pin_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pin = secrets.token_hex(8)
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    done = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin",
                           secrets.token_hex(8), "--pin", pin], capture_output=True, text=True)
    if done.returncode:
        raise OnshoreError(f"softhsm2-util could not initialise token {label!r}: {done.stderr.strip()}")
    reset()  # the module sees new tokens when it is initialised again
    return CustodyConfig(MODULE, label, pin_file=str(pin_file.resolve()))
