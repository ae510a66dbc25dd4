"""`python -m migopt` runs the `migopt` CLI."""

from migopt.cli import console_main

console_main()
