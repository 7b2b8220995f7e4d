"""Telemetry: embodiment specs, the frame schema, validation, LeRobot v3 interchange."""
