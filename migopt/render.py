"""Turning results into the CLI's output formats: JSON and YAML for scripts, rich tables for people."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Any

import pydantic_core
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from solver.plan import Plan
from solver.plan_json import plan_json_chunks


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


console = Console(soft_wrap=True)
if not console.is_terminal:  # piped output: do not fold tables to 80 columns
    console.width = 200


_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's emitter where PyYAML has it (the same text, three times faster), else the pure-Python one."""


def json_text(data: Any) -> str:
    """Plain data (or a model, dumped as `model_dump(mode="json")` would) as JSON indented by 2, non-ASCII
    escaped: the text `json.dumps(data, indent=2)` writes."""
    return json_bytes(data).decode("ascii")


def json_bytes(data: Any) -> bytes:
    """`json_text`'s text as ASCII bytes."""
    return b"".join(json_chunks(data))


def json_chunks(data: Any) -> list[bytes | memoryview]:
    """`json_text`'s text as ASCII bytes, in pieces to be written one after another, written by pydantic-core's
    serialiser in Rust (the standard library's indented encoder is pure Python: seconds for a plan of thousands
    of GPUs) and handed on as it comes."""
    try:
        if isinstance(data, Plan):
            return [*plan_json_chunks(data), b"\n"]  # the lines written ahead spliced in
        if isinstance(data, BaseModel):
            return [data.__pydantic_serializer__.to_json(data, indent=2, ensure_ascii=True), b"\n"]
        return [pydantic_core.to_json(data, indent=2, ensure_ascii=True), b"\n"]
    except pydantic_core.PydanticSerializationError:  # a lone surrogate (API JSON may carry one): json escapes it
        plain = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        return [(json.dumps(plain, indent=2) + "\n").encode("ascii")]


def yaml_text(data: Any) -> str:
    """Plain data (or a model) as block YAML in the given key order: `yaml.safe_dump(data, sort_keys=False)`'s
    text (libyaml spells a key that is empty or holds control characters otherwise: the same data)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    dumper = _SafeDumper if isinstance(data, dict | list) else yaml.SafeDumper  # libyaml ends a lone scalar "..."
    return yaml.dump(data, Dumper=dumper, sort_keys=False)


def emit_data(data: Any, output: Output) -> None:
    """Write plain data (already JSON-able) or a model as JSON or YAML to stdout; JSON as the serialiser's bytes
    where stdout has a byte buffer (a plan of thousands of GPUs is tens of megabytes: no copy to text and back,
    nor into one piece)."""
    if output is Output.yaml:
        sys.stdout.write(yaml_text(data))
        return
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(json_text(data))
        return
    sys.stdout.flush()
    buffer.writelines(json_chunks(data))


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


def render_plan(plan: Plan) -> None:
    """A plan for people: the summary, what changes per node and who is evicted, and why pods stay pending."""
    o = plan.objectives
    console.print(
        f"plan: {plan.status} ({plan.policy}) in {plan.solve_seconds:.2f}s; served {o.served_pods} pods, "
        f"weight {plan.objective} of bound {plan.bound} (gap {plan.gap:.2%}); evicts {o.evicted_pods} pods, "
        f"reconfigures {o.reconfigured_gpus} GPUs on {o.touched_nodes} nodes; fragmentation {o.fragmentation} slices"
    )
    changes = [
        [g.node, g.index, g.model, format_map(g.current) or "-", format_map(g.target) or "-", ", ".join(g.evict)]
        for g in plan.gpus
        if g.reconfigure
    ]
    if changes:
        console.print(table("GPUs that change", ["node", "gpu", "model", "current", "target", "evict"], changes))
    placed = [[p.pod, p.node, ", ".join(f"gpu{d.gpu}:{d.profile}" for d in p.devices)] for p in plan.placements]
    if placed:
        console.print(table("pods placed", ["pod", "node", "devices"], placed))
    if plan.unplaced:
        console.print(table("pods left pending", ["pod", "reason"], [[u.pod, u.reason] for u in plan.unplaced]))
    for note in plan.notes:
        console.print(f"note: {note}")
