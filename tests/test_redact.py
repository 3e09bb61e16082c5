"""The redact plugin, unit by unit: each detector (positive and negative), actions, options, the walk."""

from __future__ import annotations

import base64
import copy
import logging
import random
import re
import string
import time
from typing import Any

import pytest
from pydantic import ValidationError

from plugins.redact import REDACTIONS, Redact, RedactionBlocked, RedactOptions
from plugins.redact.checks import IBAN_LENGTHS, luhn_valid
from proxy import config
from proxy.chain import Context, Direction, Handler
from proxy.errors import ConfigError, ErrorCode
from proxy.jsonrpc import Message
from proxy.plugin_loader import build_plugins
from tests.fake_session import FakeSession

# -- realistic fake secrets, built at run time (no secret-looking literal sits in the source) --------------

ALNUM = string.ascii_letters + string.digits


def fake(prefix: str, length: int, alphabet: str = ALNUM, seed: int = 1) -> str:
    rng = random.Random(f"{prefix}{length}{seed}")
    return prefix + "".join(rng.choice(alphabet) for _ in range(length))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def fake_jwt() -> str:
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64url(b'{"sub":"1234567890","name":"Jane Doe","iat":1516239022}')
    return f"{header}.{payload}.{fake('', 43, ALNUM + '-_')}"


def fake_pem(kind: str = "RSA ") -> str:
    body = "\n".join(fake("", 64, ALNUM + "+/", seed=line) for line in range(5))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


GITHUB = fake("ghp_", 36)
AWS_KEY_ID = fake("AKIA", 16, string.ascii_uppercase + string.digits)
AWS_SECRET = fake("", 40, ALNUM + "/+")
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.org"
PEM = fake_pem()
PEM_BODY = PEM.splitlines()[2]
JWT = fake_jwt()
IBAN_DE = "DE89 3704 0044 0532 0130 00"
IBAN_GB = "GB82WEST12345698765432"


# -- helpers -----------------------------------------------------------------------------------------------


def ctx_for(message: Message, direction: Direction = Direction.TO_BACKEND) -> Context:
    return Context(FakeSession(), direction, message.get("method", ""), None, time.monotonic() + 10)


def redact_text(text: str, plugin: Redact | None = None) -> tuple[str, dict[str, int]]:
    """``text`` as the plugin leaves it (inside a tool call's arguments), and what it counted."""
    plugin = plugin or Redact()
    outcome = plugin.redactor.redact({"params": {"arguments": {"x": text}}})
    assert outcome is not None
    redacted, counts = outcome
    return redacted["params"]["arguments"]["x"], dict(counts)


def found(text: str, plugin: Redact | None = None) -> set[str]:
    return set(redact_text(text, plugin)[1])


def pass_through(reply: Message | None = None) -> Handler:
    async def call_next(ctx: Context, message: Message) -> Message | None:
        return reply

    return call_next


# -- detectors: positives ----------------------------------------------------------------------------------

POSITIVES = [
    ("aws_access_key_id", f"key id {AWS_KEY_ID} in text"),
    ("aws_access_key_id", fake("ASIA", 16, string.ascii_uppercase + string.digits)),
    ("aws_secret_access_key", f"aws_secret_access_key = {AWS_SECRET}"),
    ("aws_secret_access_key", f'{{"SecretAccessKey": "{AWS_SECRET}"}}'),
    ("google_api_key", fake("AIza", 35, ALNUM + "-_")),
    ("azure_key", f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={fake('', 86, ALNUM + '+/')}==;"),
    ("azure_key", f"Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey={fake('', 43, ALNUM)}="),
    ("github_token", f"token {GITHUB} end"),
    ("github_token", fake("gho_", 36)),
    ("github_token", fake("ghu_", 36)),
    ("github_token", fake("ghs_", 36)),
    ("github_token", fake("ghr_", 36)),
    ("github_token", fake("github_pat_", 82, ALNUM + "_")),
    ("gitlab_token", fake("glpat-", 20, ALNUM + "-_")),
    ("slack_token", fake("xoxb-", 50, ALNUM + "-")),
    ("slack_token", fake("xoxp-", 60, ALNUM + "-")),
    ("slack_token", fake("xoxa-", 40, ALNUM + "-")),
    ("slack_token", fake("xoxr-", 40, ALNUM + "-")),
    ("slack_token", fake("xoxs-", 40, ALNUM + "-")),
    ("slack_token", fake("xapp-1-", 40, ALNUM + "-")),
    ("stripe_key", fake("sk_live_", 24)),
    ("stripe_key", fake("rk_live_", 24)),
    ("jwt", f"Authorization is {JWT}"),
    ("private_key", f"key:\n{PEM}\nthat was it"),
    ("private_key", fake_pem("EC ")),
    ("private_key", fake_pem("OPENSSH ")),
    ("private_key", fake_pem("")),
    # A truncated block (no END line) is still taken.
    ("private_key", PEM.rsplit("-----END", 1)[0]),
    ("bearer_token", f"Authorization: Bearer {fake('', 32)}"),
    ("secret_assignment", "export DB_PASSWORD=correct-horse-9"),
    ("secret_assignment", '{"api_key": "s3cr3t-Value"}'),
    ("secret_assignment", "client_secret: 'hunter22hunter'"),
    ("email", f"write to {EMAIL}."),
    ("email", "first.last+tag@mail.example.co.uk"),
    ("phone", "call +44 20 7946 0958 today"),
    ("phone", "+1 (415) 555-2671"),
    ("phone", "(415) 555-2671"),
    ("phone", "415-555-2671"),
    ("phone", "020 7946 0958"),
    ("phone", "06 12 34 56 78"),
    ("card_number", f"card {CARD} exp 12/29"),
    ("card_number", "4111-1111-1111-1111"),
    ("card_number", "4111111111111111"),
    ("card_number", "5500 0000 0000 0004"),
    ("card_number", "3782 822463 10005"),
    ("iban", f"pay to {IBAN_DE} please"),
    ("iban", IBAN_GB),
    ("high_entropy", f"key {fake('', 40, ALNUM)} here"),
    ("high_entropy_hex", fake("", 40, "0123456789abcdef")),
]


@pytest.mark.parametrize(
    ("detector", "text"), POSITIVES, ids=[f"{d}-{i}" for i, (d, _) in enumerate(POSITIVES)]
)
def test_each_detector_finds_its_kind(detector: str, text: str) -> None:
    redacted, counts = redact_text(text)
    assert counts == {detector: 1}, (text, redacted)
    assert f"[REDACTED:{detector}]" in redacted


def test_a_labelled_secret_keeps_its_label() -> None:
    redacted, _ = redact_text(f"aws_secret_access_key = {AWS_SECRET}")
    assert redacted == "aws_secret_access_key = [REDACTED:aws_secret_access_key]"


def test_only_the_card_is_taken_from_a_longer_run_of_digit_groups() -> None:
    redacted, _ = redact_text(f"{CARD} 123")
    assert CARD not in redacted


# -- detectors: negatives ----------------------------------------------------------------------------------

NEGATIVES = [
    "1234567890",  # a bare number is not a phone number
    "12345678901234",
    "1700000000000",  # a timestamp in milliseconds (and no card starts with 1)
    "2024-01-15",
    "2024-01-15T10:20:30.123+02:00",
    "31-12-2024",
    "1.2.3",
    "v10.0.19041.1",
    "192.168.100.200",
    "550e8400-e29b-41d4-a716-446655440000",
    "https://example.com/path/to/Resource2024/items?page=2&sort=desc",
    "/Users/JohnSmith/Documents/Projects2024/MyApplication/src/main.py",
    "getUserProfileInformationById2",
    "The quick brown fox jumps over the lazy dog 42 times in 2024.",
    "4111 1111 1111 1112",  # fails the Luhn check
    "GB82 WEST 1234 5698 7654 33",  # fails mod 97
    "GB82WEST1234569876543",  # one character short for a British IBAN
    "user@localhost",
    "max_tokens=1024",
    "secret_name: my-app-secret",
    "tokenizer: cl100k_base",
    "password: null",
    "AKIA1234",
    fake("sk_test_", 24, string.ascii_lowercase),  # not a live key, and no digits to look random
    "eyJhbGciOiJIUzI1NiJ9",  # one base64url segment is not a JWT
    "The Bearer of this letter",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == (text, {})


ADVERSARIAL = {
    "letters": "a" * 50_000,
    "digits": "1" * 50_000,
    "digit groups": "1 " * 25_000,
    "at signs": "a@" * 25_000,
    "key headers without an end": "-----BEGIN RSA PRIVATE KEY-----\n" * 1_500,
    "jwt starts": "eyJhbGciOi." * 5_000,
    "labels": "password=" * 5_000,
    "plus signs": "+1 " * 16_000,
    "iban starts": "AA00 " * 10_000,
    "base64": "Ab3+" * 12_500,
    "e-mail locals": "user.name+tag@" * 3_500,
    "parentheses": "(0" * 25_000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_input_is_scanned_in_linear_time(text: str) -> None:
    # No clock here: a pattern that backtracked catastrophically would hang until pytest's timeout.
    redact_text(text)


def test_luhn_and_iban_checks() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert luhn_valid("378282246310005")
    assert IBAN_LENGTHS["DE"] == 22 and IBAN_LENGTHS["GB"] == 22


# -- fields named after secrets ----------------------------------------------------------------------------


def test_a_string_under_a_secret_name_is_taken_whole() -> None:
    plugin = Redact()
    message = {
        "params": {"arguments": {"password": "hunter2 with spaces", "apiKey": "abc123xyz", "note": "hi"}}
    }
    outcome = plugin.redactor.redact(message)
    assert outcome is not None
    arguments = outcome[0]["params"]["arguments"]
    assert arguments == {
        "password": "[REDACTED:secret_assignment]",
        "apiKey": "[REDACTED:secret_assignment]",
        "note": "hi",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "null"},
        {"nextPageToken": "CAESBgoEdGVzdA1234"},
        {"token_count": "123456789"},
        {"nextCursor": "eyJtIjoidG9vbHMvbGlzdCIsInYiOjEsIm8iOjUwfQ=="},
        {"_meta": {"progressToken": "Zx8kP2mQ9vL4nR7tY1wE5uI3oA6sD0fG"}},
    ],
)
def test_position_tokens_and_protocol_fields_are_not_secrets(fields: dict[str, Any]) -> None:
    message = {"params": fields}
    outcome = Redact().redactor.redact(message)
    assert outcome is not None and outcome[0] is message


def test_protocol_fields_still_lose_a_specific_secret() -> None:
    outcome = Redact().redactor.redact({"result": {"nextCursor": f"page-{GITHUB}"}})
    assert outcome is not None and outcome[0]["result"]["nextCursor"] == "page-[REDACTED:github_token]"


def test_base64_content_is_not_taken_for_a_key_but_a_random_key_in_a_log_is() -> None:
    small_png = fake("", 120, ALNUM + "+/") + "=="
    message = {
        "result": {
            "content": [{"type": "image", "data": small_png, "mimeType": "image/png"}],
            "icons": [{"src": f"data:image/png;base64,{small_png}"}],
        }
    }
    outcome = Redact().redactor.redact(message)
    assert outcome is not None and outcome[0] is message
    log = {"params": {"level": "info", "data": small_png}}
    outcome = Redact().redactor.redact(log)
    assert outcome is not None and outcome[1] == {"high_entropy": 1}


def test_anchor_windows_hold_every_occurrence_even_one_straddling_the_edge() -> None:
    from plugins.redact.scanner import _anchor_windows

    assert _anchor_windows("ab.ab", ("ab",), 0, 4) == [(0, 5)]
    assert _anchor_windows("..ab......ab", ("ab",), 1, 3) == [(1, 5), (9, 12)]
    assert _anchor_windows(b"xxAA00yyAA00", (b"AA00",), 0, 5) == [(2, 7), (8, 12)]


# -- the walk ----------------------------------------------------------------------------------------------


def test_every_string_is_scanned_keys_nested_arrays_and_meta_but_not_the_envelope() -> None:
    message = {
        "jsonrpc": "2.0",
        "id": EMAIL,
        "method": "tools/call",
        "params": {
            EMAIL: 1,
            "arguments": {"deep": [[["x", {"y": [GITHUB]}]]]},
            "_meta": {"note": AWS_KEY_ID},
        },
    }
    outcome = Redact().redactor.redact(message)
    assert outcome is not None
    redacted, counts = outcome
    assert redacted["id"] == EMAIL and redacted["method"] == "tools/call" and redacted["jsonrpc"] == "2.0"
    assert redacted["params"] == {
        "[REDACTED:email]": 1,
        "arguments": {"deep": [[["x", {"y": ["[REDACTED:github_token]"]}]]]},
        "_meta": {"note": "[REDACTED:aws_access_key_id]"},
    }
    assert counts == {"email": 1, "github_token": 1, "aws_access_key_id": 1}


def test_result_and_error_are_scanned() -> None:
    reply = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "structuredContent": {"owner": EMAIL},
            "contents": [{"uri": "memo://x", "text": f"key {GITHUB}"}],
            "messages": [{"role": "user", "content": {"type": "text", "text": CARD}}],
        },
    }
    outcome = Redact().redactor.redact(reply)
    assert outcome is not None
    assert outcome[1] == {"email": 1, "github_token": 1, "card_number": 1}
    error = {
        "jsonrpc": "2.0",
        "id": 2,
        "error": {"code": -1, "message": f"bad key {GITHUB}", "data": [EMAIL]},
    }
    outcome = Redact().redactor.redact(error)
    assert outcome is not None
    assert outcome[0]["error"] == {
        "code": -1,
        "message": "bad key [REDACTED:github_token]",
        "data": ["[REDACTED:email]"],
    }


def test_the_callers_message_is_never_modified_and_a_clean_one_comes_back_as_is() -> None:
    message = {"params": {"a": [GITHUB, {"b": EMAIL}], "c": {"d": "clean"}}}
    before = copy.deepcopy(message)
    outcome = Redact().redactor.redact(message)
    assert outcome is not None
    assert message == before
    # Untouched branches are shared, changed ones copied.
    assert outcome[0]["params"]["c"] is message["params"]["c"]
    assert outcome[0]["params"]["a"] is not message["params"]["a"]
    clean = {"params": {"a": ["x", {"b": "y"}]}}
    outcome = Redact().redactor.redact(clean)
    assert outcome is not None and outcome[0] is clean


def test_a_string_that_occurs_twice_is_redacted_everywhere() -> None:
    outcome = Redact().redactor.redact({"params": {"a": GITHUB, "b": [GITHUB], GITHUB: GITHUB}})
    assert outcome is not None
    assert GITHUB not in repr(outcome[0]) and outcome[1] == {"github_token": 4}


def test_a_block_without_its_end_running_into_the_next_string_is_still_found_in_both() -> None:
    truncated = PEM.rsplit("-----END", 1)[0]
    outcome = Redact().redactor.redact({"params": {"a": truncated, "b": f"then {GITHUB}"}})
    assert outcome is not None
    assert outcome[0]["params"] == {"a": "[REDACTED:private_key]", "b": "then [REDACTED:github_token]"}


# -- actions -----------------------------------------------------------------------------------------------


def test_hash_is_keyed_stable_and_distinct() -> None:
    keyed = Redact(RedactOptions(secrets_action="hash", hash_key="k" * 32))
    first, _ = redact_text(GITHUB, keyed)
    again, _ = redact_text(GITHUB, keyed)
    other, _ = redact_text(fake("ghp_", 36, seed=2), keyed)
    rekeyed, _ = redact_text(GITHUB, Redact(RedactOptions(secrets_action="hash", hash_key="j" * 32)))
    assert first.startswith("[HASHED:github_token:") and len(first) == len("[HASHED:github_token:]") + 16
    assert first == again and first != other and first != rekeyed
    # Without a key, one per process: two instances agree.
    default = Redact(RedactOptions(secrets_action="hash"))
    assert (
        redact_text(GITHUB, default)[0]
        == redact_text(GITHUB, Redact(RedactOptions(secrets_action="hash")))[0]
    )


async def test_block_refuses_the_message_naming_the_detector_only() -> None:
    plugin = Redact(RedactOptions(actions={"github_token": "block"}))
    request = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"arguments": {"t": GITHUB}}}
    with pytest.raises(RedactionBlocked) as caught:
        await plugin(ctx_for(request), request, pass_through())
    assert caught.value.code == ErrorCode.REDACTION_BLOCKED == -32064
    assert "github_token" in caught.value.message and GITHUB not in str(caught.value.to_error())
    assert plugin.counts() == {"github_token": 1}


def test_category_defaults_and_per_detector_overrides() -> None:
    plugin = Redact(RedactOptions(personal_action="hash", actions={"card_number": "mask"}))
    text, counts = redact_text(f"{EMAIL} {CARD} {GITHUB}", plugin)
    assert text.startswith("[HASHED:email:")
    assert text.endswith(" [REDACTED:card_number] [REDACTED:github_token]")
    assert counts == {"email": 1, "card_number": 1, "github_token": 1}


def test_disabled_detectors_find_nothing() -> None:
    # (The token would otherwise still fall to the entropy heuristic.)
    plugin = Redact(RedactOptions(disabled=("email", "github_token", "high_entropy")))
    assert redact_text(f"{EMAIL} {GITHUB} {CARD}", plugin) == (
        f"{EMAIL} {GITHUB} [REDACTED:card_number]",
        {"card_number": 1},
    )


# -- custom patterns ---------------------------------------------------------------------------------------


def test_custom_patterns_with_their_own_action_and_value_group() -> None:
    options = RedactOptions(
        patterns=(
            {"name": "employee_id", "regex": r"\bEMP-\d{6}\b"},
            {"name": "ticket", "regex": r"ticket (?P<value>T\d{4})", "action": "hash"},
            {"name": "line_start", "regex": r"^internal:"},
        )
    )
    plugin = Redact(options)
    text, counts = redact_text("ask EMP-123456 about ticket T1234", plugin)
    assert text.startswith("ask [REDACTED:employee_id] about ticket [HASHED:ticket:")
    assert counts == {"employee_id": 1, "ticket": 1}
    # ^ holds at the start of every string (and line), wherever the string sits in the message.
    outcome = plugin.redactor.redact({"params": {"a": "x", "b": ["internal: y", "not internal: z"]}})
    assert outcome is not None and outcome[0]["params"]["b"] == ["[REDACTED:line_start] y", "not internal: z"]


def test_a_custom_pattern_can_block() -> None:
    plugin = Redact(RedactOptions(patterns=({"name": "codename", "regex": "PROJECT-X", "action": "block"},)))
    with pytest.raises(Exception, match="codename"):
        plugin.redactor.redact({"params": {"a": "about PROJECT-X"}})


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"patterns": [{"name": "bad", "regex": "(unclosed"}]}, "not a valid regular expression"),
        ({"patterns": [{"name": "empty", "regex": "x*"}]}, "matches the empty string"),
        ({"patterns": [{"name": "slow", "regex": "(a+)+b"}]}, "nested quantifiers"),
        ({"patterns": [{"name": "slow", "regex": r"(\w*x)+y"}]}, "nested quantifiers"),
        ({"patterns": [{"name": "anchor", "regex": r"\Afoo"}]}, "use ^ and $"),
        ({"patterns": [{"name": "Bad Name", "regex": "x"}]}, "should match pattern"),
        ({"patterns": [{"name": "email", "regex": "x"}]}, "built-in detector"),
        ({"patterns": [{"name": "a", "regex": "x"}, {"name": "a", "regex": "y"}]}, "more than once"),
        ({"disabled": ["emial"]}, "unknown detector 'emial'"),
        ({"actions": {"nope": "mask"}}, "unknown detector 'nope'"),
        ({"actions": {"email": "shred"}}, "Input should be 'mask', 'hash' or 'block'"),
        ({"timeout_seconds": 0}, "greater than 0"),
        ({"hash_key": "short"}, "at least 16"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused_at_construction(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(complaint)):
        RedactOptions.model_validate(options)


def test_safe_custom_patterns_are_accepted() -> None:
    for regex in (r"(ab)+", r"(a+b)?c", r"[(+*]+", r"\(a+\)+", r"(a{1,3}b){1}", r"(?:x|y)+"):
        RedactOptions.model_validate({"patterns": [{"name": "ok", "regex": regex}]})


def test_a_bad_regex_in_the_config_file_is_a_one_line_config_error(tmp_path: Any) -> None:
    path = tmp_path / "portico.yaml"
    path.write_text(
        "mcpServers: {}\nplugins:\n  - name: redact\n    options:\n"
        "      patterns: [{name: bad, regex: '(unclosed'}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        build_plugins(config.load(path))
    message = caught.value.message
    assert "plugins[0].options.patterns.0.regex" in message and "not a valid regular expression" in message
    assert "\n" not in message


# -- counts and logs ---------------------------------------------------------------------------------------


async def test_counts_go_on_the_context_and_the_plugin_and_the_log_names_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="portico.redact")
    plugin = Redact()
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"a": f"{GITHUB} {EMAIL}"}}
    reply = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": f"{EMAIL} {CARD}"}]}}
    ctx = ctx_for(request)
    out = await plugin(ctx, request, pass_through(reply))
    assert (
        out is not None and out["result"]["content"][0]["text"] == "[REDACTED:email] [REDACTED:card_number]"
    )
    assert ctx.get(REDACTIONS) == {"github_token": 1, "email": 2, "card_number": 1}
    assert plugin.counts() == {"github_token": 1, "email": 2, "card_number": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "portico.redact"]
    assert len(lines) == 2 and "email=1, github_token=1" in lines[0] and "card_number=1, email=1" in lines[1]
    for value in (GITHUB, EMAIL, CARD):
        assert value not in caplog.text


async def test_a_clean_message_sets_empty_counts_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="portico.redact")
    request = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    ctx = ctx_for(request)
    assert await Redact()(ctx, request, pass_through({"jsonrpc": "2.0", "id": 1, "result": {}})) is not None
    assert ctx.get(REDACTIONS) == {} and not caplog.records


def test_every_builtin_detector_has_a_positive_example() -> None:
    from plugins.redact import BUILTIN_NAMES

    assert {detector for detector, _ in POSITIVES} == set(BUILTIN_NAMES)
