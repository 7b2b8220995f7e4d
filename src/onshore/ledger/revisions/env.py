"""Alembic's entry point for this line of revisions: run them on the connection we were handed."""

from onshore.catalog.migrate import run_env

run_env()
