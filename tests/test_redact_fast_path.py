"""The redact scanner's early exit: a text it turns away unscanned is one no detector would find anything in.

``TextScanner.find`` first asks a few detectors with the weakest cheap tests (the "frontier") and stops
when none of them admits the text. These tests hold that shortcut to what scanning with every detector's
regex, no cheap test asked at all, finds: secrets exactly at a detector's minimum length, one character
short of it, in tiny messages, next to non-ASCII text, and thousands of generated near misses.
"""

from __future__ import annotations

import random
import string
import time

import pytest

from plugins.redact import REDACTIONS, Redact, RedactOptions
from plugins.redact.detectors import BUILTIN, Detector
from plugins.redact.redactor import NOTHING_REPLACED
from plugins.redact.scanner import Finding, TextScanner, _Facts, _unoverlapped
from proxy.chain import Context, Direction
from proxy.jsonrpc import Message
from tests.fake_session import FakeSession

ALNUM = string.ascii_letters + string.digits
KELVIN = "\u212a"  # lower-cases to an ASCII "k"
DOTTED_I = "\u0130"  # lower-cases to two characters


def fake(prefix: str, length: int, alphabet: str = ALNUM, seed: int = 7) -> str:
    rng = random.Random(f"{prefix}{length}{seed}")
    return prefix + "".join(rng.choice(alphabet) for _ in range(length))


# Each detector's shortest finding (its ``min_length``, where the pattern allows), built at run time.
AT_MINIMUM = [
    ("email", "a@b.co"),
    ("phone", "+12345678"),
    ("secret_assignment", "token=abc123"),
    ("card_number", "4222222222222"),
    ("slack_token", fake("xoxb-", 10)),
    ("slack_token", fake("xapp-1-", 10)),
    ("iban", "NO9386011117947"),
    ("jwt", "eyAAAAAA.eyBBBBBB."),
    ("aws_access_key_id", fake("AKIA", 16, string.ascii_uppercase + string.digits)),
    ("azure_key", "?sig=" + fake("", 16)),
    ("bearer_token", "bearer " + fake("", 16)),
    ("high_entropy", fake("", 24, seed=3)),
    ("stripe_key", fake("sk_live_", 16)),
    ("gitlab_token", fake("gldt-", 20)),
    ("private_key", "-----BEGIN PRIVATE KEY-----"),
    ("high_entropy_hex", fake("", 32, "0123456789abcdef")),
    ("github_token", fake("github_pat_", 22)),
    ("github_token", fake("ghp_", 36)),
    ("google_api_key", fake("AIza", 35)),
    ("aws_secret_access_key", "awssecretkey=" + fake("", 39, seed=2) + "/"),
]

# Non-ASCII letters next to, or inside, what the lower-casing detectors look for.
NON_ASCII = [
    ("bearer_token", f"bearer {KELVIN}{fake('', 16)}"),
    ("bearer_token", f"{DOTTED_I}stanbul: Bearer {fake('', 20)}"),
    ("secret_assignment", f"api_{KELVIN}ey={fake('', 8)}"),
    ("secret_assignment", f"to{KELVIN}en: s3cr3t-Value"),
    ("secret_assignment", f"{KELVIN * 3} token=abc123"),
    ("email", "caf\u00e9 \u2192 jane@example.org \U0001f600"),
    ("phone", "\u65e5\u672c +81 3 1234 5678"),
]


def scanner() -> TextScanner:
    return Redact().redactor._scanner


def every_regex(scan: TextScanner, text: str) -> list[Finding]:
    """What every detector's own search finds in ``text``, no cheap test asked: the truth to hold to."""
    facts = _Facts(text)
    found: list[Finding] = []
    for probe in scan._probes:
        probe.collect(facts, found)
    return _unoverlapped(found) if len(found) > 1 else found


def spans(found: list[Finding]) -> list[tuple[int, int, str]]:
    return [(finding.start, finding.end, finding.detector.name) for finding in found]


def assert_faithful(scan: TextScanner, text: str) -> None:
    assert spans(scan.find(text)) == spans(every_regex(scan, text)), text


def test_every_builtin_detector_has_an_example_at_its_minimum() -> None:
    assert {name for name, _ in AT_MINIMUM} == {detector.name for detector in BUILTIN}


@pytest.mark.parametrize(("detector", "text"), AT_MINIMUM + NON_ASCII)
def test_a_secret_at_the_edge_is_found_on_its_own_and_in_a_tiny_message(detector: str, text: str) -> None:
    scan = scanner()
    assert [name for _, _, name in spans(scan.find(text))] == [detector]
    assert_faithful(scan, text)
    # One character short of the minimum, or cut at the other end: whatever the regexes say still holds.
    assert_faithful(scan, text[:-1])
    assert_faithful(scan, text[1:])
    message = {"params": {"name": "null_echo", "arguments": {"text": text}}}
    outcome = Redact().redactor.redact(message)
    assert outcome is not None and dict(outcome[1]) == {detector: 1}


@pytest.mark.parametrize(("detector", "text"), AT_MINIMUM)
def test_a_secret_that_is_an_object_key_is_found(detector: str, text: str) -> None:
    outcome = Redact().redactor.redact({"result": {text: 1}})
    assert outcome is not None and dict(outcome[1]) == {detector: 1}


def test_digits_spread_over_several_strings_are_counted_as_before() -> None:
    # No string holds eight digits, the joined text does: the digit test passes, the scan runs, and the
    # phone detector (which never crosses a string's edge) rightly finds nothing.
    message = {"params": {"a": "1234", "b": "5678", "c": "+1 415"}}
    outcome = Redact().redactor.redact(message)
    assert outcome is not None and outcome[0] is message and not outcome[1]


def test_a_secret_split_between_a_key_and_its_value_is_taken_from_the_field_name() -> None:
    # "password" names a secret: its value goes whole, though no pattern finds anything in the text.
    message = {"params": {"arguments": {"password": "hunter2 with spaces", "note": "hi"}}}
    outcome = Redact().redactor.redact(message)
    assert outcome is not None
    assert outcome[0]["params"]["arguments"] == {"password": "[REDACTED:secret_assignment]", "note": "hi"}


CLEAN = [
    "portico bench 17",
    "name\nnull_echo\narguments\ntext\nportico bench 17",
    "content\nisError\ntype\ntext\ntext\nportico bench 17",
    "structuredContent\napplication/json",
    "caf\u00e9 \u00fcber \u65e5\u672c\u8a9e \U0001f600",
]


@pytest.mark.parametrize("text", CLEAN)
def test_a_small_clean_text_is_turned_away_before_any_regex(text: str) -> None:
    scan = scanner()
    assert not scan._may_admit(_Facts(text))
    assert scan.find(text) == []


# Texts with no finding that the early exit cannot turn away: each passes some detector's cheap tests.
LOOK_ALIKES = [
    "2025-01-15T10:20:30Z",  # eight digits or more
    "550e8400-e29b-41d4-a716-446655440000",  # a run of 20 base64 characters or more
    "the Bearer of this letter",
    "password: null",
    "mail@localhost",
    "eyJhbGciOiJIUzI1NiJ9",
]
# Texts that look a little like a secret, but not enough for any detector's cheap tests.
NEAR_MISSES = [
    "url https://example.com/a?x=1",  # ":" and "=", but no word that labels a secret
    "token count 12",  # a label, but no ":" or "="
    "AKIA1234",  # too short a run for an AWS key id
    "xoxb-1234",
]


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_a_text_that_passes_the_early_exit_is_still_scanned_in_full(text: str) -> None:
    scan = scanner()
    assert scan._may_admit(_Facts(text))
    assert scan.find(text) == [] and every_regex(scan, text) == []


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_a_near_miss_is_turned_away(text: str) -> None:
    scan = scanner()
    assert not scan._may_admit(_Facts(text))
    assert every_regex(scan, text) == []


def test_no_detector_is_left_out_of_the_early_exit() -> None:
    # Every detector that the early exit does not ask itself is implied by one that it does.
    scan = scanner()
    asked = scan._without_literals + scan._with_literals
    for probe in scan._probes:
        assert any(other.implied_by(probe) for other in asked), probe.detector.name


def test_a_custom_pattern_has_no_cheap_test_so_every_text_is_scanned() -> None:
    plugin = Redact(RedactOptions.model_validate({"patterns": [{"name": "proj", "regex": "PX[0-9]"}]}))
    outcome = plugin.redactor.redact({"params": {"a": "PX1"}})
    assert outcome is not None and outcome[0]["params"]["a"] == "[REDACTED:proj]"


def test_a_run_length_test_is_refused_on_a_lower_casing_detector() -> None:
    with pytest.raises(ValueError, match="min_run"):
        Detector("x", "custom", "abc", min_run=3, lowercase=True)


def near_miss(rng: random.Random) -> str:
    """A few pieces: shortened or altered secrets, everyday strings, and random characters."""
    alphabet = ALNUM + " -_.:=@+/()\n\t\"'%&?" + KELVIN + DOTTED_I + "\u00e9\u017f"
    pieces = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.3:
            text = rng.choice(AT_MINIMUM + NON_ASCII)[1]
            cut = rng.randint(0, len(text))
            text = text[:cut] + rng.choice(alphabet) + text[cut + 1 :]
            pieces.append(text.upper() if rng.random() < 0.2 else text)
        elif roll < 0.6:
            pieces.append(rng.choice(CLEAN + LOOK_ALIKES + NEAR_MISSES))
        else:
            pieces.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))))
    return rng.choice(["", " ", "\n", "=", ": "]).join(pieces)


def test_generated_near_misses_find_what_every_regex_finds() -> None:
    rng = random.Random(20250115)
    scans = [scanner(), Redact().redactor._strict_scanner]
    turned_away = 0
    for _ in range(3000):
        text = near_miss(rng)
        for scan in scans:
            assert_faithful(scan, text)
            turned_away += not scan._may_admit(_Facts(text))
    assert turned_away > 500  # the early exit is taken, and taken rightly


# -- the plugin: a clean message costs no allocation of counts, and reports the same ---------------------


async def test_a_clean_tiny_call_both_ways_reports_empty_counts_and_passes_the_same_objects() -> None:
    plugin = Redact()
    request = {
        "jsonrpc": "2.0",
        "id": 17,
        "method": "tools/call",
        "params": {"name": "null_echo", "arguments": {"text": "portico bench 17"}},
    }
    reply = {
        "jsonrpc": "2.0",
        "id": 17,
        "result": {"content": [{"type": "text", "text": "portico bench 17"}], "isError": False},
    }
    seen: list[Message] = []

    async def call_next(ctx: Context, message: Message) -> Message | None:
        seen.append(message)
        return reply

    ctx = Context(FakeSession(), Direction.TO_BACKEND, "tools/call", None, time.monotonic() + 10)
    assert await plugin(ctx, request, call_next) is reply
    assert seen == [request] and seen[0] is request
    assert ctx.get(REDACTIONS) == {} and plugin.counts() == {}
    outcome = plugin.redactor.redact(reply)
    assert outcome is not None and outcome[1] is NOTHING_REPLACED and not NOTHING_REPLACED


async def test_counts_after_a_clean_request_still_add_up_over_the_reply() -> None:
    plugin = Redact()
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}}
    reply = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "a@b.co"}]}}

    async def call_next(ctx: Context, message: Message) -> Message | None:
        return reply

    ctx = Context(FakeSession(), Direction.TO_BACKEND, "tools/call", None, time.monotonic() + 10)
    out = await plugin(ctx, request, call_next)
    assert out is not None and out["result"]["content"][0]["text"] == "[REDACTED:email]"
    assert ctx.get(REDACTIONS) == {"email": 1} and plugin.counts() == {"email": 1}
    assert dict(NOTHING_REPLACED) == {}
