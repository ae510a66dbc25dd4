"""`python -m optimizer` runs the `migopt` CLI."""

from optimizer.cli import main

main()
