"""Exposed names: prefixing, mode never, shortening to the budget, sanitizing, collisions, stability."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.naming import NameCollision, NamingRules, build_name_table

# MCP's rule for tool and prompt names, written out here rather than imported from the code under test.
MCP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
LONG = "a_tool_with_a_very_long_name_that_exists_only_to_test_how_a_gateway_handles_long_tool_name"
assert len(LONG) == 90


def valid(name: str) -> bool:
    return MCP_NAME.fullmatch(name) is not None


def table(owned: list[tuple[str, str]], **rules: object) -> dict[tuple[str, str], str]:
    return build_name_table(owned, NamingRules(**rules), "tool")  # type: ignore[arg-type]


# -- prefixing --------------------------------------------------------------------------------------------


def test_names_are_prefixed_with_backend_and_separator() -> None:
    owned = [("weather-api", "get_weather"), ("notes", "add_note"), ("notes", "list")]
    assert table(owned) == {
        ("weather-api", "get_weather"): "weather-api_get_weather",
        ("notes", "add_note"): "notes_add_note",
        ("notes", "list"): "notes_list",
    }


@pytest.mark.parametrize("separator", ["__", ".", "-", "x"])
def test_the_configured_separator_is_used(separator: str) -> None:
    assert table([("b", "t")], separator=separator) == {("b", "t"): f"b{separator}t"}


def test_the_same_name_on_two_backends_gets_two_names() -> None:
    names = table([("a", "echo"), ("b", "echo")])
    assert names == {("a", "echo"): "a_echo", ("b", "echo"): "b_echo"}


def test_mode_never_keeps_names_as_they_are() -> None:
    owned = [("weather", "get_weather"), ("notes", "add_note")]
    assert table(owned, mode="never") == {
        ("weather", "get_weather"): "get_weather",
        ("notes", "add_note"): "add_note",
    }


# -- collisions --------------------------------------------------------------------------------------------


def test_mode_never_collision_names_both_backends() -> None:
    with pytest.raises(NameCollision) as caught:
        table([("alpha", "echo"), ("beta", "add"), ("beta", "echo")], mode="never")
    message = str(caught.value)
    assert "'alpha'" in message
    assert "'beta'" in message
    assert "'echo'" in message
    assert "never" in message


def test_mode_never_collision_of_a_long_name_names_both_backends() -> None:
    # A name offered twice stops start-up, whether or not it also needs shortening.
    with pytest.raises(NameCollision) as caught:
        table([("alpha", LONG), ("beta", LONG)], mode="never")
    assert "'alpha'" in str(caught.value)
    assert "'beta'" in str(caught.value)


def test_mode_never_collision_of_a_name_with_invalid_characters() -> None:
    with pytest.raises(NameCollision) as caught:
        table([("alpha", "get weather"), ("beta", "get weather")], mode="never")
    assert "'alpha'" in str(caught.value)
    assert "'beta'" in str(caught.value)


def test_mode_always_separates_prefixed_names_that_coincide() -> None:
    # "a_b" + "c" and "a" + "b_c" both read "a_b_c": the first keeps it, the second is disambiguated.
    names = table([("a_b", "c"), ("a", "b_c")])
    assert names[("a_b", "c")] == "a_b_c"
    other = names[("a", "b_c")]
    assert other != "a_b_c"
    assert valid(other)
    assert len(other) <= 64


# -- shortening --------------------------------------------------------------------------------------------


def test_long_names_are_shortened_within_the_budget() -> None:
    names = table([("everything", LONG), ("everything", "echo")])
    short = names[("everything", LONG)]
    assert len(short) <= 64
    assert valid(short)
    # Readable: it starts with the natural name, and ends with a hash.
    assert short.startswith("everything_a_tool_with")
    assert re.search(r"_[0-9a-f]{8,}$", short)
    assert names[("everything", "echo")] == "everything_echo"


@pytest.mark.parametrize("budget", [16, 20, 32, 40, 100, 128])
def test_a_configured_budget_is_respected(budget: int) -> None:
    owned = [("backend", LONG), ("backend", LONG + "_2"), ("other", LONG), ("b", "x" * 200)]
    names = table(owned, budget=budget)
    assert all(len(n) <= budget and valid(n) for n in names.values()), names
    assert len(set(names.values())) == len(owned)


def test_a_name_exactly_at_the_budget_is_kept() -> None:
    name = "t" * (64 - len("b_"))
    assert table([("b", name)]) == {("b", name): f"b_{name}"}
    assert table([("b", name + "t")])[("b", name + "t")] != f"b_{name}t"


def test_long_names_sharing_their_head_stay_unique() -> None:
    head = "x" * 80
    owned = [("b", head + suffix) for suffix in ("1", "2", "3", "a", "b")]
    names = table(owned)
    assert len(set(names.values())) == len(owned)
    assert all(len(n) <= 64 and valid(n) for n in names.values())


def test_same_long_name_on_two_backends_stays_unique() -> None:
    names = table([("a", LONG), ("b", LONG)])
    assert names[("a", LONG)] != names[("b", LONG)]


def test_shortened_names_are_deterministic_across_restarts() -> None:
    owned = [("a", LONG), ("a", "weird name!"), ("b", LONG), ("b", "echo"), ("c", "x" * 300), ("a_b", "c")]
    first = table(owned)
    # A second, independent build (a restarted gateway) gives the very same names.
    second = table(list(owned))
    assert first == second
    # And a shortened name does not depend on unrelated tools of other backends.
    alone = table([("a", LONG)])
    assert alone[("a", LONG)] == first[("a", LONG)]


def test_a_shortened_name_never_steals_a_natural_name() -> None:
    # Find what ("a", LONG) would be shortened to, then let another tool's natural name be exactly that.
    shortened = table([("a", LONG)])[("a", LONG)]
    assert shortened.startswith("a_")
    squatter = shortened[len("a_") :]
    for owned in ([("a", LONG), ("a", squatter)], [("a", squatter), ("a", LONG)]):
        names = table(owned)
        assert names[("a", squatter)] == shortened
        assert names[("a", LONG)] != shortened
        assert valid(names[("a", LONG)])
        assert len(names[("a", LONG)]) <= 64


def test_a_shortened_name_never_steals_a_natural_name_of_another_backend() -> None:
    shortened = table([("a", LONG)])[("a", LONG)]
    # Backend "a_a" offering tool X exposes "a_a_X"; pick X so that this is the shortened name.
    assert shortened.startswith("a_a_")
    squatter = shortened[len("a_a_") :]
    names = table([("a", LONG), ("a_a", squatter)])
    assert names[("a_a", squatter)] == shortened
    assert names[("a", LONG)] != shortened


# -- sanitizing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["get weather", "wetter/abrufen", "café", "emoji🙂", "tab\tname", "a:b", ""])
def test_invalid_characters_are_sanitized(name: str) -> None:
    exposed = table([("b", name)])[("b", name)]
    assert valid(exposed), exposed
    assert len(exposed) <= 64


def test_sanitized_names_stay_readable() -> None:
    exposed = table([("weather", "get weather")])[("weather", "get weather")]
    assert exposed.startswith("weather_get_weather_")


def test_a_trailing_newline_is_not_a_valid_character() -> None:
    # "^...$" also matches before a final newline; a name with one must still be sanitized.
    for mode in ("always", "never"):
        exposed = table([("b", "echo\n")], mode=mode)[("b", "echo\n")]
        assert "\n" not in exposed
        assert valid(exposed), repr(exposed)


def test_sanitized_names_do_not_collide_with_clean_ones() -> None:
    names = table([("b", "a b"), ("b", "a_b"), ("b", "a.b"), ("b", "a-b"), ("b", "a\u00a0b")])
    assert len(set(names.values())) == 5
    assert names[("b", "a_b")] == "b_a_b"


# -- properties --------------------------------------------------------------------------------------------

backends = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
tool_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.-]{1,140}", fullmatch=True),
    # Any text JSON can carry (orjson refuses lone surrogates, so no backend can send one).
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=150),
    st.text(alphabet="ab_-.\n ", min_size=0, max_size=80),
)


@settings(max_examples=300, deadline=None)
@given(
    owned=st.lists(st.tuples(backends, tool_names), max_size=25, unique=True),
    separator=st.sampled_from(["_", "__", ".", "-", "x"]),
    mode=st.sampled_from(["always", "never"]),
    budget=st.integers(min_value=16, max_value=128),
)
@example(owned=[("b", "tool\n")], separator="_", mode="always", budget=64)
@example(owned=[("a_b", "c"), ("a", "b_c")], separator="_", mode="always", budget=64)
def test_every_exposed_name_is_valid_within_budget_and_unique(
    owned: list[tuple[str, str]], separator: str, mode: str, budget: int
) -> None:
    try:
        names = table(owned, separator=separator, mode=mode, budget=budget)
    except NameCollision:
        # Only mode never refuses, and only when two backends offer one name.
        assert mode == "never"
        offered: dict[str, set[str]] = {}
        for backend, name in owned:
            offered.setdefault(name, set()).add(backend)
        assert any(len(owners) > 1 for owners in offered.values())
        return
    assert set(names) == set(owned)
    for name in names.values():
        assert valid(name), repr(name)
        assert len(name) <= budget
    assert len(set(names.values())) == len(names)
    # Deterministic: an independent build agrees.
    assert table(list(owned), separator=separator, mode=mode, budget=budget) == names


@settings(max_examples=200, deadline=None)
@given(
    owned=st.lists(
        st.tuples(backends, st.from_regex(r"[a-z_]{1,30}", fullmatch=True)), max_size=20, unique=True
    )
)
def test_short_valid_names_are_exactly_backend_separator_name(owned: list[tuple[str, str]]) -> None:
    names = table(owned)
    naturals = [f"{b}_{n}" for b, n in owned]
    for (b, n), exposed in names.items():
        natural = f"{b}_{n}"
        # The first owner of a natural name keeps it; only a later duplicate is renamed.
        if naturals.index(natural) == owned.index((b, n)) and len(natural) <= 64:
            assert exposed == natural
