"""Onshore: sovereign physical AI on resident industrial telemetry.

See ../shared/DESIGN.md for the layers; lower layers never import higher ones.
"""

__version__ = "0.1.0"
