"""`python -m qmed.cli ...` runs the `qmed` command."""

from qmed.cli.app import main

main()
