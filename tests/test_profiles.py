import pytest

from solver.errors import MigoptError
from solver.profiles import parse_profile, profile_from_resource, resource_name


@pytest.mark.parametrize(
    ("text", "c", "g", "gb", "attrs", "excluded"),
    [
        ("1g.5gb", 1, 1, 5, (), False),
        ("1c.3g.20gb", 1, 3, 20, (), False),
        ("1g.10gb+me", 1, 1, 10, ("me",), False),
        ("1g.24gb-me", 1, 1, 24, ("me",), True),
        ("2g.48gb+me.all", 2, 2, 48, ("me.all",), False),
        ("1g.24gb+me,gfx", 1, 1, 24, ("gfx", "me"), False),
    ],
)
def test_parses_the_mig_parted_grammar(
    text: str, c: int, g: int, gb: int, attrs: tuple[str, ...], excluded: bool
) -> None:
    parsed = parse_profile(text)
    assert (parsed.compute_slices, parsed.gpu_slices, parsed.memory_gb) == (c, g, gb)
    assert parsed.attributes == attrs
    assert parsed.excluded is excluded


def test_short_form_equals_long_form() -> None:
    assert parse_profile("1g.5gb") == parse_profile("1c.1g.5gb")
    assert str(parse_profile("1c.1g.5gb")) == "1g.5gb"
    assert str(parse_profile("1c.3g.20gb")) == "1c.3g.20gb"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1g",
        "g.5gb",
        "0g.5gb",
        "1g.5",
        "1g.5gb+",
        "1g.5gb+me,me",
        "1g.5gb+1x",
        "1g.5gb+me.",
        "4c.3g.20gb",
        "9g.1gb!",
    ],
)
def test_malformed_profiles_are_one_line_errors(text: str) -> None:
    with pytest.raises(MigoptError) as err:
        parse_profile(text)
    assert "\n" not in str(err.value)
    assert repr(text) in str(err.value)


def test_resource_names_round_trip() -> None:
    assert resource_name("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"
    assert profile_from_resource("nvidia.com/mig-1g.10gb.me") == "1g.10gb+me"
    assert profile_from_resource("nvidia.com/mig-3g.40gb") == "3g.40gb"
    for bad in ("nvidia.com/gpu", "nvidia.com/mig-9g", "nvidia.com/mig-1g.5gb.1x"):
        with pytest.raises(MigoptError):
            profile_from_resource(bad)
