"""A plan as JSON (`migopt plan -o json`), with the lines written ahead spliced in.

A plan of thousands of GPUs is tens of megabytes of indented JSON, four fifths of it the lines of GPUs that keep
their maps, which are the same whatever CP-SAT decides. The optimal policy, asked to (`as_json`), writes those
lines on its second thread while CP-SAT solves (`Problem.kept_lines_json`) and hands them to the plan; the command
writes the rest at the end and splices them in. The bytes are those of serialising the whole plan in one pass
(`tests/test_plan_json.py`): a line is taken as written only while it is the very object it was written from
(lines are frozen), and the one-pass serialisation stays for everything else.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import TypeAdapter

from solver.checkpoint import Checkpoint, carry_on
from solver.plan import GpuPlan, Plan, WrittenLines

_LINE = TypeAdapter(GpuPlan)
_ITEM_INDENT = b"    "  # a line's place in the plan: an item of the top-level `gpus` array
_NO_GPUS = b'\n  "gpus": [],\n'  # the array, emptied, in the plan written without its lines


_CHECKPOINT_LINES = 2_000
"""Lines written between two checkpoints (about 10 ms)."""


def written_lines(lines: Iterable[GpuPlan], checkpoint: Checkpoint = carry_on) -> WrittenLines:
    """Each line's JSON as it stands in a plan's `gpus` array, by the line's id; `checkpoint` may abandon the
    work between lines."""
    written = {}
    for number, line in enumerate(lines):
        if number % _CHECKPOINT_LINES == 0:
            checkpoint()
        written[id(line)] = (line, line_json(line))
    return written


def line_json(line: GpuPlan) -> bytes:
    """The line indented as an item of a plan's `gpus` array (`plan_json`'s indentation: 2 per level)."""
    text = _LINE.dump_json(line, indent=2, ensure_ascii=True)
    return _ITEM_INDENT + text.replace(b"\n", b"\n" + _ITEM_INDENT)


def plan_json(plan: Plan) -> bytes:
    """`plan.model_dump_json(indent=2, ensure_ascii=True)`'s text, as bytes; lines written ahead spliced in."""
    return b"".join(plan_json_chunks(plan))


def plan_json_chunks(plan: Plan) -> list[bytes | memoryview]:
    """`plan_json`'s text in pieces to be written one after another: at 10,000 nodes the text is 50 MB, and
    each copy of it into one piece took 0.03-0.1 s. Written in one pass when most lines were not written ahead:
    writing lines one by one is slower than that."""
    written = plan._written_lines
    texts: list[bytes | None] = []
    for line in plan.gpus:
        entry = written.get(id(line))
        texts.append(entry[1] if entry is not None and entry[0] is line else None)
    if 2 * texts.count(None) >= len(texts):
        return [Plan.__pydantic_serializer__.to_json(plan, indent=2, ensure_ascii=True)]
    rest = plan.model_copy(update={"gpus": []})
    text = Plan.__pydantic_serializer__.to_json(rest, indent=2, ensure_ascii=True)
    at = text.index(_NO_GPUS)  # JSON strings hold no raw line break: the only top-level `gpus` key
    lines = b",\n".join(t if t is not None else line_json(line) for t, line in zip(texts, plan.gpus, strict=True))
    around = memoryview(text)  # slices of it are not copies
    return [around[:at], b'\n  "gpus": [\n', lines, b"\n  ],\n", around[at + len(_NO_GPUS) :]]
