"""Reading YAML and JSON fast (libyaml's parser, the `json` parser) keeps every limit of the pure-Python loader:
the same data, the same refusals (nesting, alias bombs, cycles, bad text), one `MigoptError` line each; and the
fast writers (pydantic-core's JSON, libyaml's emitter) write the text the standard ones did."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migopt.render import Output, emit_data, json_text, yaml_text
from nvidia_protocol.safe_yaml import (
    MAX_DEPTH,
    MAX_REPEATED_NODES,
    BoundedLoader,
    PurePythonLoader,
    _json_height_below,
    load_document,
    load_yaml,
    read_yaml_file,
)
from solver.errors import MigoptError
from solver.plan import PlanPolicy
from solver.planner import make_plan
from tests.cli_runner import run_cli

LOADERS = [BoundedLoader, PurePythonLoader]


def all_readings(text: str) -> list[str]:
    """What each way of reading `text` answers: the data's repr, or the error line."""
    answers = []
    for read in (
        lambda: load_yaml(text, "x"),
        lambda: load_yaml(text, "x", loader=PurePythonLoader),
        lambda: load_document(text, "x"),
    ):
        try:
            answers.append(repr(read()))
        except MigoptError as err:
            answers.append(str(err))
    return answers


def test_libyaml_is_the_default_parser_here() -> None:
    """The speed this module is for: without libyaml the fallback is correct but many times slower."""
    assert yaml.__with_libyaml__ and issubclass(BoundedLoader, yaml.CSafeLoader)


# ---- the same data whichever parser reads it --------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(st.characters(min_codepoint=32, max_codepoint=0xD7FF, exclude_characters="\x7f\x85"), max_size=12)
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text("abcxyz-_./", max_size=6), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_json_values, indent=st.sampled_from([None, 2]))
def test_json_reads_the_same_through_every_parser(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert load_document(text, "x") == value
    for loader in LOADERS:
        assert load_yaml(text, "x", loader=loader) == value


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(st.text("abc", min_size=1, max_size=3), _json_values, max_size=4))
def test_yaml_reads_the_same_through_both_loaders(value: dict[str, Any]) -> None:
    text = yaml.safe_dump(value, sort_keys=False)
    assert load_yaml(text, "x") == load_yaml(text, "x", loader=PurePythonLoader) == value
    assert load_document(text, "x") == value


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.sampled_from('[]{}:,-&*<!?" \n\tab1.\\u\x00\ud800'), max_size=120))
def test_any_text_is_data_or_one_migopt_error_line(text: str) -> None:
    for answer in all_readings(text):
        assert "\n" not in answer


def test_json_extensions_and_bom_read_as_yaml_did() -> None:
    assert load_document('{"a": NaN}', "x") == {"a": "NaN"}  # not JSON: YAML reads it, as it always did
    assert load_document('\ufeff{"a": [1, 2]}', "x") == {"a": [1, 2]}
    assert load_document("{a: 1, b: [x, y]}", "x") == {"a": 1, "b": ["x", "y"]}  # YAML flow style, not JSON


# ---- nesting ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["", "1", '"s"', "{}"])
def test_the_depth_limit_is_the_same_for_json_and_both_yaml_parsers(inner: str) -> None:
    """Scalars count as a level, as PyYAML's composer counts them: the answers agree, errors to the line."""
    for levels in (MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
        text = "[\n" * levels + inner + "]" * levels
        answers = all_readings(text)
        assert len(set(answers)) == 1, (levels, inner, answers)
        nodes = levels + (inner != "")
        if nodes > MAX_DEPTH:
            line = MAX_DEPTH + 1
            assert answers[0] == f"x is not valid YAML at line {line}: nested deeper than {MAX_DEPTH} levels"
        else:
            assert not answers[0].startswith("x is not valid")


def _height(value: Any) -> int:
    """Levels of collections in a JSON value (a scalar: 0)."""
    if isinstance(value, dict):
        return 1 + max(map(_height, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_height, value), default=0)
    return 0


_tricky_strings = st.text(st.sampled_from('[]{}"\\\n ax\u00e9'), max_size=8)
_nested = st.recursive(
    _scalars | _tricky_strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_strings, inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=_nested, indent=st.sampled_from([None, 1]), ascii_only=st.booleans(), limit=st.integers(1, 8))
def test_the_height_read_from_json_text_is_the_height_of_the_data(
    value: Any, indent: int | None, ascii_only: bool, limit: int
) -> None:
    """The text-only bound that spares walking the data agrees with the data, brackets, quotes and backslashes
    inside strings included."""
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    assert _json_height_below(text, limit) == (_height(value) < limit)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 3000 + "]" * 3000,  # past libyaml's own limit (1,000) and the json module's recursion
        "[\n" * 3000 + "]" * 3000,
        "".join(" " * i + "a:\n" for i in range(3000)) + " " * 3000 + "b: 1\n",
        '{"a": ' * 1500 + "1" + "}" * 1500,
    ],
    ids=["flow", "flow-lines", "block", "json-objects"],
)
def test_very_deep_documents_name_where_the_limit_was_passed(text: str) -> None:
    answers = all_readings(text)
    assert len(set(answers)) == 1, answers  # the same line, too
    assert answers[0].endswith(f": nested deeper than {MAX_DEPTH} levels"), answers


def test_a_self_referencing_alias_is_too_deep_not_a_hang() -> None:
    for loader in LOADERS:
        with pytest.raises(MigoptError, match=f"nested deeper than {MAX_DEPTH} levels"):
            load_yaml("a: &a [1, *a]", "x", loader=loader)


# ---- aliases ---------------------------------------------------------------------------------------------------


def _laughs(levels: int, fan_out: int = 9) -> str:
    text = "l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]\n"
    for n in range(1, levels + 1):
        text += f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * fan_out) + "]\n"
    return text


def _merges(levels: int, fan_out: int = 9) -> str:
    """`<<` merges copy the merged pairs while constructing: an alias bomb that shares nothing."""
    text = "m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(fan_out)) + "}\n"
    for n in range(1, levels + 1):
        text += f"m{n}: &m{n}\n  <<: [" + ", ".join([f"*m{n - 1}"] * fan_out) + "]\n"
    return text


@pytest.mark.parametrize("loader", LOADERS, ids=["libyaml", "pure-python"])
@pytest.mark.parametrize("bomb", [_laughs(9), _merges(8)], ids=["billion-laughs", "merge-bomb"])
def test_alias_bombs_are_refused_before_anything_is_built(loader: type[BoundedLoader], bomb: str) -> None:
    with pytest.raises(MigoptError, match=r"^x is not valid YAML: its aliases expand it to \d+ nodes"):
        load_yaml(bomb, "x", loader=loader)


@pytest.mark.parametrize("loader", LOADERS, ids=["libyaml", "pure-python"])
def test_ordinary_aliases_are_read(loader: type[BoundedLoader]) -> None:
    """Shared entries (what anchors are for) expand to a little more than the document: fine."""
    assert load_yaml(_laughs(2), "x", loader=loader)["l2"] == [[["lol"] * 9] * 9] * 9
    text = "base: &b {profile: 1g.10gb, count: 2}\n" + "".join(f"g{i}: {{<<: *b, index: {i}}}\n" for i in range(50))
    assert load_yaml(text, "x", loader=loader)["g7"] == {"profile": "1g.10gb", "count": 2, "index": 7}


def test_the_alias_allowance_scales_with_the_document() -> None:
    """Up to the allowance aliases may repeat anything; a bigger document may repeat as much as itself again."""
    shared = "s: &s [" + ", ".join(str(i) for i in range(999)) + "]\n"  # 1,000 nodes
    fits = shared + "r: [" + ", ".join(["*s"] * (MAX_REPEATED_NODES // 1000 - 1)) + "]\n"
    assert len(load_yaml(fits, "x")["r"]) == MAX_REPEATED_NODES // 1000 - 1
    over = shared + "r: [" + ", ".join(["*s"] * (MAX_REPEATED_NODES // 1000 + 5)) + "]\n"
    with pytest.raises(MigoptError, match="its aliases expand it"):
        load_yaml(over, "x")


# ---- text ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_bytes_that_are_not_utf8_are_the_same_error_for_json_and_yaml(tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"f{suffix}"
    file.write_bytes(b'{"nodes": ["caf\xe9"]}')
    with pytest.raises(MigoptError, match=r"^f is not UTF-8 text \(byte 0xe9 at offset 15\)$"):
        read_yaml_file(file, "f")


def test_a_lone_surrogate_escape_is_refused_and_a_pair_is_one_character() -> None:
    with pytest.raises(MigoptError, match=r"^x is not valid YAML: not valid Unicode text$"):
        load_document('{"a": "\\ud800"}', "x")
    assert load_document('{"a": "\\ud83d\\ude00"}', "x") == {"a": "\U0001f600"}


@pytest.mark.parametrize("loader", LOADERS, ids=["libyaml", "pure-python"])
@pytest.mark.parametrize("text", ["a: 2001-13-14", "a: !!timestamp 2001-12-14x", "a: !!int x"])
def test_values_the_constructors_trip_on_are_one_line(loader: type[BoundedLoader], text: str) -> None:
    with pytest.raises(MigoptError, match=r"^x is not valid YAML"):
        load_yaml(text, "x", loader=loader)


def test_a_bad_date_in_a_snapshot_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text("nodes: []\npods: []\nrunning: [{name: 2001-13-14}]\n")
    result = run_cli(capsys, "plan", "--snapshot", str(file))
    assert result.code == 2 and result.err.count("\n") == 1
    assert result.err.startswith(f"error: snapshot {str(file)!r} is not valid YAML/JSON: a value cannot be read")


def test_a_trace_that_is_not_utf8_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    file = tmp_path / "trace.csv"
    file.write_bytes(b"name,gpu_milli\npod-\xff,500\n")
    result = run_cli(capsys, "simulate", "--trace", str(file))
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err == f"error: {file}: cannot read trace: not UTF-8 text (byte 0xff)\n"


# ---- writing ---------------------------------------------------------------------------------------------------

_printable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)


def _spelled_alike(value: Any) -> bool:
    """No float Rust spells otherwise (`1e-7` for Python's `1e-07`) and no DEL (`\\u007f` in Python's): both
    are the same JSON value either way."""
    leaves = _leaves(value) + [k for k in _keys(value)]
    return not any(
        (isinstance(v, float) and v and not 1e-4 <= abs(v) < 1e16) or (isinstance(v, str) and "\x7f" in v)
        for v in leaves
    )


@settings(max_examples=200, deadline=None)
@given(value=_printable)
def test_json_text_is_what_json_dumps_writes(value: Any) -> None:
    fast, standard = json_text(value), json.dumps(value, indent=2) + "\n"
    assert fast.isascii() and json.loads(fast) == json.loads(standard)
    if _spelled_alike(value):
        assert fast == standard


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in _keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


@settings(max_examples=150, deadline=None)
@given(value=_printable)
def test_yaml_text_is_what_safe_dump_writes(value: Any) -> None:
    """The same data always; the same text unless a key is empty or holds a control character (libyaml writes
    `'': 1` where PyYAML writes `? ''`)."""
    fast, standard = yaml_text(value), yaml.safe_dump(value, sort_keys=False)
    assert yaml.safe_load(fast) == yaml.safe_load(standard)
    if all(k and k.isprintable() for k in _keys(value)):
        assert fast == standard


def test_a_plan_prints_the_same_text_from_the_model_as_from_its_dump(capsys: pytest.CaptureFixture[str]) -> None:
    from migopt.snapshot_io import load_snapshot

    snapshot = load_snapshot(Path(__file__).parent.parent / "examples" / "snapshot.yaml")
    plan = make_plan(snapshot, PlanPolicy(time_limit_s=5))
    for output in (Output.json, Output.yaml):
        emit_data(plan, output)
        from_model = capsys.readouterr().out
        emit_data(plan.model_dump(mode="json"), output)
        assert from_model == capsys.readouterr().out
    assert json.loads(json_text(plan)) == plan.model_dump(mode="json")
    assert not math.isnan(json.loads(json_text(plan))["gap"])
