"""`python -m optimizer` runs the `migopt` CLI."""

from migopt.cli import main

main()
