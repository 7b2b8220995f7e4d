"""Simulated consortium members: telemetry generators for Meta-World and Tennessee Eastman.

``generate`` (in :mod:`onshore.sim.generate`) writes frame-schema Parquet plus an embodiment
TOML, ready for ingest. The environments, their scripted experts and the sensor model live in
one module each.
"""
