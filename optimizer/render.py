"""Turning results into the CLI's output formats: JSON and YAML for scripts, rich tables for people."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


console = Console(soft_wrap=True)


def emit_data(data: Any, output: Output) -> None:
    """Write plain data (already JSON-able) as JSON or YAML to stdout."""
    if output is Output.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    """A rich table with the given header and rows, cells turned into text."""
    result = Table(title=title, title_justify="left")
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*("" if cell is None else str(cell) for cell in row))
    return result


def format_map(devices: dict[str, int]) -> str:
    """`{profile: count}` as the CLI's `1g.5gb=2,3g.20gb=1` form."""
    return ",".join(f"{name}={count}" for name, count in devices.items())
