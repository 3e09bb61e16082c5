"""The redact plugin's options, validated once at start-up (a bad regex is a config error, not a crash)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from plugins.redact.detectors import BUILTIN_NAMES, Category

Action = Literal["mask", "hash", "block"]

_QUANTIFIER = re.compile(r"[*+]|\{(\d*)(,?)(\d*)\}")
# \A, \Z or \z not preceded by an escaping backslash.
_STRING_ANCHOR = re.compile(r"(?<!\\)(?:\\\\)*\\[AZz]")


class CustomPattern(BaseModel):
    """An operator's own detector: a name (used in placeholders, counts and options), a regex, an action.

    A group named ``value`` in the regex limits the replacement to that part of the match.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    regex: str = Field(min_length=1, max_length=2000)
    action: Action = "mask"

    @field_validator("regex")
    @classmethod
    def _usable(cls, regex: str) -> str:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.fullmatch(""):
            raise ValueError("the regular expression matches the empty string")
        if _STRING_ANCHOR.search(regex):
            raise ValueError(r"\A and \Z are not supported (a pattern applies line by line): use ^ and $")
        if has_nested_quantifier(regex):
            raise ValueError(
                "the regular expression repeats a group that itself repeats (like (a+)+), which can take "
                "exponential time; write it without nested quantifiers"
            )
        return regex


class RedactOptions(BaseModel):
    """How the redact plugin treats what its detectors find (see the package docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The action for every detector of a category, unless ``actions`` names the detector.
    secrets_action: Action = "mask"
    personal_action: Action = "mask"
    # Per-detector actions, by name (built-in or custom).
    actions: dict[str, Action] = Field(default_factory=dict)
    # Detectors turned off, by name.
    disabled: tuple[str, ...] = ()
    patterns: tuple[CustomPattern, ...] = ()
    # The HMAC-SHA256 key of the hash action. Without one, each process draws a random key: equal values
    # hash alike within one gateway process, but not across processes or restarts.
    hash_key: SecretStr | None = Field(default=None, min_length=16)
    # The most one message's redaction may take; a message that takes longer is blocked, never forwarded.
    timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    # Messages larger than this (estimated from their strings) are scanned in a worker thread, so a big
    # message cannot hold up the event loop and its time budget can be enforced while it runs.
    thread_above_bytes: int = Field(default=65536, ge=0)

    @model_validator(mode="after")
    def _names_are_known(self) -> RedactOptions:
        custom = [pattern.name for pattern in self.patterns]
        for name in custom:
            if name in BUILTIN_NAMES:
                raise ValueError(f"patterns: {name!r} is the name of a built-in detector; choose another")
            if custom.count(name) > 1:
                raise ValueError(f"patterns: the name {name!r} is used more than once")
        known = BUILTIN_NAMES | set(custom)
        for option, names in (("disabled", list(self.disabled)), ("actions", list(self.actions))):
            for name in names:
                if name not in known:
                    raise ValueError(
                        f"{option}: unknown detector {name!r} (known: {', '.join(sorted(known))})"
                    )
        return self

    def action_for(self, name: str, category: Category) -> Action:
        if name in self.actions:
            return self.actions[name]
        if category == "secrets":
            return self.secrets_action
        if category == "personal":
            return self.personal_action
        return next(pattern.action for pattern in self.patterns if pattern.name == name)


def has_nested_quantifier(regex: str) -> bool:
    """Whether a group containing a repeating quantifier is itself repeated: ``(a+)+``, ``(\\w*x)*``.

    A heuristic on the source text (escapes and character classes are skipped): it catches the classic
    shape of catastrophic backtracking, not every one (overlapping alternatives such as ``(a|a)*`` pass).
    """
    # For each open group: whether something inside it repeats.
    repeats_inside = [False]
    closed_group_repeats = False
    index = 0
    while index < len(regex):
        char = regex[index]
        quantifier = _QUANTIFIER.match(regex, index)
        if char == "\\":
            index += 2
        elif char == "[":
            index = _class_end(regex, index)
        elif char == "(":
            repeats_inside.append(False)
            index += 1
        elif char == ")" and len(repeats_inside) > 1:
            closed_group_repeats = repeats_inside.pop()
            repeats_inside[-1] = repeats_inside[-1] or closed_group_repeats
            index += 1
            continue
        elif quantifier is not None:
            if _repeats(quantifier):
                if closed_group_repeats:
                    return True
                repeats_inside[-1] = True
            index = quantifier.end()
        else:
            index += 1
        closed_group_repeats = False
    return False


def _repeats(quantifier: re.Match[str]) -> bool:
    """``*``, ``+``, ``{m,}`` and ``{m,n}`` with n > 1 repeat; ``{0,1}`` and ``{1}`` do not."""
    if quantifier.group(0) in "*+":
        return True
    low, comma, high = quantifier.groups()
    if not comma:
        return int(low or 0) > 1
    return not high or int(high) > 1


def _class_end(regex: str, index: int) -> int:
    """The index just after the character class that opens at ``index``."""
    index += 1
    if index < len(regex) and regex[index] == "^":
        index += 1
    if index < len(regex) and regex[index] == "]":
        index += 1
    while index < len(regex) and regex[index] != "]":
        index += 2 if regex[index] == "\\" else 1
    return index + 1
