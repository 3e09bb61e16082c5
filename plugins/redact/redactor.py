"""Redacted copies of whole JSON-RPC messages: every string under ``params``, ``result`` and ``error``.

Two passes. The first gathers every string of the message (object keys too) and scans them joined into
one text: scanning each string on its own costs a few Python calls per detector per string, one long text
a few C-speed passes. The join is faithful: "\\n" is a boundary to every detector (custom patterns are
compiled with re.MULTILINE for this), so a detector finds in the joined text what it finds in each string,
at the same place. A clean message ends there and comes back as the very same object. Otherwise the second
pass walks the message and replaces what the first found; a string that a finding crossed into from its
neighbour (a private key block without its END line) is scanned again on its own.

The walk is copy-on-write: a dict or list is copied only when something inside it changed. The caller's
message is never modified, so a dict shared with other sessions (a backend notification fanned out) or
kept by a cache stays intact.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import itertools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from plugins.redact.detectors import Detector
from plugins.redact.options import Action
from plugins.redact.scanner import Finding, TextScanner
from proxy.jsonrpc import Message

# Fields whose values are opaque to everyone but their issuer and random-looking on purpose: the heuristic
# detectors skip them (the specific formats still apply), or paging and progress would break.
OPAQUE_FIELDS = frozenset({"cursor", "nextCursor", "progressToken", "requestId"})
# Base64 content next to a "mimeType" (images, audio, binary resources) is opaque the same way.
BINARY_FIELDS = frozenset({"data", "blob"})
# Names that end in "token" but hold a pagination or sync position, not a credential.
_POSITION_TOKEN = re.compile(r"(?:page|progress|continuation|sync|resume)_?token$", re.IGNORECASE)
_MEMBERS = ("params", "result", "error")
# What ``Redactor.redact`` counts for a message it left alone: one shared, read-only empty mapping.
NOTHING_REPLACED: Mapping[str, int] = MappingProxyType({})
_FIELD_CACHE_LIMIT = 4096


class Blocked(Exception):
    """A detector whose action is ``block`` found something: the message must not pass."""

    def __init__(self, detector: str) -> None:
        super().__init__(detector)
        self.detector = detector


@dataclass(slots=True)
class _Gathered:
    """The first pass's harvest: every string, and whether a secret-named field holds one."""

    texts: list[str] = field(default_factory=list)
    # The values of opaque fields (see ``is_opaque``), scanned without the heuristic detectors.
    opaque: list[str] = field(default_factory=list)
    secret_field: bool = False


_UNSEEN = object()


class Redactor:
    """Builds the redacted copy of a message and counts what it replaced, per detector.

    Thread-safe: it keeps no per-message state, so big messages can be redacted in worker threads.
    """

    def __init__(self, detectors: Sequence[Detector], actions: Mapping[str, Action], hash_key: bytes) -> None:
        self._scanner = TextScanner(detectors)
        self._strict_scanner = TextScanner([d for d in detectors if not d.heuristic])
        self._actions = dict(actions)
        self._hash_key = hash_key
        self._fields = [(re.compile(d.field, re.IGNORECASE), d) for d in detectors if d.field and d.check]
        # Object keys repeat from message to message; which of them name a secret is remembered.
        self._field_of: dict[str, Detector | None] = {}

    def redact(
        self, message: Message, limit: float = float("inf")
    ) -> tuple[Message, Mapping[str, int]] | None:
        """The redacted message (``message`` itself when nothing changed) and the replacements made; None
        when the message's strings add up to more than ``limit`` characters (and nothing was done).

        Raises ``Blocked`` when a detector whose action is ``block`` finds something.
        """
        gathered = self._gather([message[m] for m in _MEMBERS if m in message], limit)
        if gathered is None:
            return None
        found = _findings_per_text(gathered.texts, self._scanner)
        found_opaque = _findings_per_text(gathered.opaque, self._strict_scanner)
        if not found and not found_opaque and not gathered.secret_field:
            return message, NOTHING_REPLACED
        counts: Counter[str] = Counter()
        walk = _Walk(self, found, found_opaque, counts, gathered.secret_field)
        changes = {m: walk.value(message[m], False) for m in _MEMBERS if m in message}
        changed = {m: value for m, value in changes.items() if value is not message[m]}
        return ({**message, **changed} if changed else message), counts

    def _gather(self, roots: list[Any], limit: float) -> _Gathered | None:
        """Every string under ``roots`` (None as soon as they add up to more than ``limit`` characters)."""
        gathered = _Gathered()
        texts, opaque, field_of = gathered.texts, gathered.opaque, self._field_of
        size = 0
        pending = roots
        while pending:
            value = pending.pop()
            if isinstance(value, str):
                texts.append(value)
                size += len(value)
            elif isinstance(value, dict):
                # Containers count too (a million small numbers are no small message).
                size += len(value)
                binary = "mimeType" in value
                for key, item in value.items():
                    if isinstance(key, str):
                        texts.append(key)
                        size += len(key)
                    if isinstance(item, str):
                        size += len(item)
                        if key in OPAQUE_FIELDS or (binary and key in BINARY_FIELDS):
                            opaque.append(item)
                            continue
                        texts.append(item)
                        # Most keys are known not to name a secret: one dict lookup says so.
                        if field_of.get(key, _UNSEEN) is not None and self.field_detector(key, item):
                            gathered.secret_field = True
                    elif isinstance(item, (dict, list)):
                        pending.append(item)
            elif isinstance(value, list):
                size += len(value)
                for item in value:
                    if isinstance(item, str):
                        texts.append(item)
                        size += len(item)
                    elif isinstance(item, (dict, list)):
                        pending.append(item)
            if size > limit:
                return None
        return gathered

    def field_detector(self, key: Any, value: str) -> Detector | None:
        """The detector that claims ``value`` whole because of the name it is stored under, if any."""
        if not isinstance(key, str):
            return None
        try:
            detector = self._field_of[key]
        except KeyError:
            detector = None
            if not _POSITION_TOKEN.search(key):
                detector = next((d for pattern, d in self._fields if pattern.search(key)), None)
            if len(self._field_of) >= _FIELD_CACHE_LIMIT:
                self._field_of.clear()
            self._field_of[key] = detector
        if detector is None or detector.check is None or detector.check(value) != len(value):
            return None
        return detector

    def replacement(self, detector: Detector, value: str, counts: Counter[str]) -> str:
        action = self._actions[detector.name]
        counts[detector.name] += 1
        if action == "block":
            raise Blocked(detector.name)
        if action == "hash":
            digest = hmac.new(self._hash_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
            return f"[HASHED:{detector.name}:{digest.hexdigest()[:16]}]"
        return f"[REDACTED:{detector.name}]"


def _findings_per_text(texts: list[str], scanner: TextScanner) -> dict[str, list[Finding]]:
    """What the scan of ``texts`` joined found, per string (by value), with each string's own offsets."""
    if not texts:
        return {}
    found = scanner.find("\n".join(texts))
    if not found:
        return {}
    # Where each string starts in the joined text.
    starts = list(itertools.accumulate((len(text) + 1 for text in texts[:-1]), initial=0))
    per_text: dict[str, list[Finding]] = {}
    owner: dict[str, int] = {}
    rescan: set[str] = set()
    for finding in found:
        first = bisect.bisect_right(starts, finding.start) - 1
        last = bisect.bisect_right(starts, finding.end - 1) - 1
        if first != last:
            rescan.update(texts[first : last + 1])
            continue
        text = texts[first]
        # A string that occurs several times has the same findings each time: keep one occurrence's.
        if owner.setdefault(text, first) == first:
            offset = starts[first]
            local = Finding(finding.start - offset, finding.end - offset, finding.detector, finding.rank)
            per_text.setdefault(text, []).append(local)
    for text in rescan:
        per_text[text] = scanner.find(text)
    return per_text


class _Walk:
    """The second pass over one message: replaces what the first found, copying what changes."""

    __slots__ = ("counts", "found", "found_opaque", "redactor", "secret_fields")

    def __init__(
        self,
        redactor: Redactor,
        found: dict[str, list[Finding]],
        found_opaque: dict[str, list[Finding]],
        counts: Counter[str],
        secret_fields: bool,
    ) -> None:
        self.redactor = redactor
        self.found = found
        self.found_opaque = found_opaque
        self.counts = counts
        # Whether the first pass saw a field named after a secret (else none needs looking for).
        self.secret_fields = secret_fields

    def value(self, value: Any, opaque: bool) -> Any:
        if isinstance(value, str):
            return self.string(value, opaque)
        if isinstance(value, dict):
            return self.dict(value)
        if isinstance(value, list):
            return self.list(value)
        return value

    def dict(self, value: dict[Any, Any]) -> dict[Any, Any]:
        copy: dict[Any, Any] | None = None
        binary = "mimeType" in value
        for index, (key, item) in enumerate(value.items()):
            new_key = self.string(key, False) if isinstance(key, str) else key
            opaque = key in OPAQUE_FIELDS or (binary and key in BINARY_FIELDS)
            secret = None
            if self.secret_fields and not opaque and isinstance(item, str):
                secret = self.redactor.field_detector(key, item)
            if secret is not None:
                new_item: Any = self.redactor.replacement(secret, item, self.counts)
            else:
                new_item = self.value(item, opaque)
            if copy is None and (new_key is not key or new_item is not item):
                copy = dict(itertools.islice(value.items(), index))
            if copy is not None:
                copy[new_key] = new_item
        return value if copy is None else copy

    def list(self, value: list[Any]) -> list[Any]:
        copy: list[Any] | None = None
        for index, item in enumerate(value):
            new_item = self.value(item, False)
            if copy is None and new_item is not item:
                copy = value[:index]
            if copy is not None:
                copy.append(new_item)
        return value if copy is None else copy

    def string(self, text: str, opaque: bool) -> str:
        findings = (self.found_opaque if opaque else self.found).get(text)
        if not findings:
            return text
        pieces: list[str] = []
        last = 0
        for finding in findings:
            value = text[finding.start : finding.end]
            pieces += (
                text[last : finding.start],
                self.redactor.replacement(finding.detector, value, self.counts),
            )
            last = finding.end
        pieces.append(text[last:])
        return "".join(pieces)
