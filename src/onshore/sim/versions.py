"""Versions of the packages a generated file or a reported number depends on."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("onshore", "metaworld", "mujoco", "tep-studio", "gymnasium", "numpy", "pyarrow")


def package_versions() -> dict[str, str]:
    """``{package: version}`` for :data:`PACKAGES` and Python itself ("absent" if missing)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out
