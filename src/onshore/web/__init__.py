"""The read-only residency dashboard: `onshore dashboard` (Starlette + Jinja2, served by uvicorn)."""
