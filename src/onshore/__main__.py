"""`python -m onshore` runs the CLI."""

from onshore.cli.app import main

main()
