"""How migopt's long-running processes (`run`, `agent`, `twin serve`) log: a timestamp on every line, and text
for people or JSON for a log pipeline. Chosen by `--log-level` / `--log-format` or `MIGOPT_LOG_LEVEL` /
`MIGOPT_LOG_FORMAT`; flags win.

Text lines are `time=… level=… logger=… message`, so the `key=value` pairs the controller writes in its
messages read as one record; JSON lines carry the same four keys (and `exception` when there is one).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from solver.errors import MigoptError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogFormat(StrEnum):
    text = "text"
    json = "json"


LogLevelOption = Annotated[
    str | None,
    typer.Option("--log-level", help="debug, info, warning or error (default: $MIGOPT_LOG_LEVEL, else info)."),
]
LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option("--log-format", help="text or json lines, timestamped (default: $MIGOPT_LOG_FORMAT, else text)."),
]


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"time={_timestamp(record)} level={record.levelname} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def parse_level(level: str) -> str:
    """A level name as logging knows it; anything else is a one-line error."""
    name = level.strip().upper()
    if name not in LEVELS:
        raise MigoptError(f"unknown log level {level!r}: expected one of {', '.join(n.lower() for n in LEVELS)}")
    return name


def parse_format(value: str) -> LogFormat:
    try:
        return LogFormat(value.strip().lower())
    except ValueError:
        raise MigoptError(f"unknown log format {value!r}: expected text or json") from None


def configure_logging(level: str | None = None, log_format: LogFormat | None = None, default: str = "INFO") -> None:
    """Route the root logger to stderr at `level` in `log_format`, the environment filling what is not given."""
    chosen_level = parse_level(level or os.environ.get("MIGOPT_LOG_LEVEL") or default)
    chosen_format = log_format or parse_format(os.environ.get("MIGOPT_LOG_FORMAT") or "text")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen_format is LogFormat.json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(chosen_level)
