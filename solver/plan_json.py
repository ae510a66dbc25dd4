"""A plan as JSON (`migopt plan -o json`), with the lines written ahead spliced in.

A plan of thousands of GPUs is tens of megabytes of indented JSON, four fifths of it the lines of GPUs that keep
their maps, which are the same whatever CP-SAT decides. The optimal policy, asked to (`as_json`), writes those
lines on its second thread while CP-SAT solves (`Problem.kept_lines_json`) and hands them to the plan; the command
writes the rest at the end and splices them in. The bytes are those of serialising the whole plan in one pass
(`tests/test_plan_json.py`): a line is taken as written only while it is the very object it was written from
(lines are frozen), lines alike are written once with their node and index put in, and the one-pass
serialisation stays for everything else.
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
    write = _LineWriter()
    for number, line in enumerate(lines):
        if number % _CHECKPOINT_LINES == 0:
            checkpoint()
        written[id(line)] = (line, write(line))
    return written


def line_json(line: GpuPlan) -> bytes:
    """The line indented as an item of a plan's `gpus` array (`plan_json`'s indentation: 2 per level)."""
    text = _LINE.dump_json(line, indent=2, ensure_ascii=True)
    return _ITEM_INDENT + text.replace(b"\n", b"\n" + _ITEM_INDENT)


_HEAD = b'    {\n      "node": "'  # a line's text up to its node's name, which comes first, then its index
_INDEX = b'",\n      "index": '


class _LineWriter:
    """`line_json`, with the text after a line's node and index (its rest) written once for lines alike: the lines
    of GPUs that keep their maps share one map and layout per layout (`Problem.kept_lines`), and a cluster repeats
    a few layouts (1,700 among 80,000 GPUs at 10,000 nodes: 0.2-0.35 s for their lines, against 0.4-0.6 s line by
    line). Lines are alike when they hold the very same map and layout objects (alive while the lines are) and
    the same other fields, none evicting; a line is written whole when its node's name would need escaping."""

    def __init__(self) -> None:
        self._rests: dict[tuple[object, ...], bytes] = {}

    def __call__(self, line: GpuPlan) -> bytes:
        node = line.node
        if line.evict or not (node.isascii() and node.isprintable() and '"' not in node and "\\" not in node):
            return line_json(line)
        alike = (id(line.current), id(line.target), id(line.layout), line.model, line.reconfigure, line.forecast)
        rest = self._rests.get(alike)
        head = b"".join((_HEAD, node.encode("ascii"), _INDEX, str(line.index).encode("ascii")))
        if rest is not None:
            return head + rest
        text = line_json(line)
        if text.startswith(head):
            self._rests[alike] = text[len(head) :]
        return text


def plan_json(plan: Plan) -> bytes:
    """`plan.model_dump_json(indent=2, ensure_ascii=True)`'s text, as bytes; lines written ahead spliced in."""
    return b"".join(plan_json_chunks(plan))


def plan_json_chunks(plan: Plan) -> list[bytes | memoryview]:
    """`plan_json`'s text in pieces to be written one after another: at 10,000 nodes the text is 50 MB, and
    each copy of it into one piece took 0.03-0.1 s. The lines not written ahead are written here, alike ones once
    (`_LineWriter`); when most lines would be written whole, the plan is written in one pass, which is faster
    than that (0.24-0.27 s at 5,000 nodes, against 0.35-0.57 s line by line and 0.15-0.24 s for the lines of
    a plan that keeps most maps, written alike)."""
    written = plan._written_lines
    texts: list[bytes | None] = []
    for line in plan.gpus:
        entry = written.get(id(line))
        texts.append(entry[1] if entry is not None and entry[0] is line else None)
    unwritten = {(id(line.current), id(line.layout)) for text, line in zip(texts, plan.gpus, strict=True) if not text}
    if 2 * len(unwritten) >= len(texts):  # most lines would be written whole, one by one: slower than one pass
        return [Plan.__pydantic_serializer__.to_json(plan, indent=2, ensure_ascii=True)]
    rest = plan.model_copy(update={"gpus": []})
    text = Plan.__pydantic_serializer__.to_json(rest, indent=2, ensure_ascii=True)
    at = text.index(_NO_GPUS)  # JSON strings hold no raw line break: the only top-level `gpus` key
    write = _LineWriter()
    lines = b",\n".join(t if t is not None else write(line) for t, line in zip(texts, plan.gpus, strict=True))
    around = memoryview(text)  # slices of it are not copies
    return [around[:at], b'\n  "gpus": [\n', lines, b"\n  ],\n", around[at + len(_NO_GPUS) :]]
