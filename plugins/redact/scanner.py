"""Finding sensitive values in a string, fast enough to run on every message.

CPython's regex engine costs tens of nanoseconds a character on patterns like these, ``in`` and
``bytes.translate`` well under one. So each detector first asks cheap questions (a literal that must
occur, a digit count) and then runs its regex only where a match can be: around each occurrence of an
anchor (the "@" of an e-mail address, the word "token" of a labelled secret), around each cluster of
digits (phone numbers, cards), or on each long run of base64 characters (the entropy detectors).

Most messages are small and clean, and for them even the cheap questions add up, asked detector by
detector. So the scanner first asks only the few detectors with the weakest cheap tests (see
``_frontier``): every other detector's tests imply one of theirs, so when none of these lets a text
through, neither would the rest, and the scan is over.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from plugins.redact.detectors import Detector

_DIGITS = b"0123456789"
_RUN_CHARS = (string.ascii_letters + string.digits + "+/_-").encode()


def _number_class(byte: int) -> int:
    if byte in _DIGITS:
        return ord("0")
    if byte in b" -.()/":
        return ord("-")
    if byte == ord("+"):
        return byte
    return ord("A") if byte in string.ascii_uppercase.encode() else ord(" ")


# Views of a string's ASCII form (non-ASCII characters became "?", so indices carry over). The number view
# marks digits "0", separators written inside numbers "-", upper-case letters "A" and keeps "+"; the run
# view marks base64 characters "w". Everything else becomes a space. Detectors search them for anchors
# with bytes.find, or for digit clusters with a regex over a handful of symbols.
_NUMBER_VIEW = bytes(_number_class(byte) for byte in range(256))
_RUN_VIEW = bytes(ord("w") if byte in _RUN_CHARS else ord(" ") for byte in range(256))
_RUN = re.compile(r"[A-Za-z0-9+/_\-]+")
# Eight or more digits at most three separators apart: where a phone number or card number can be.
_DIGIT_CLUSTER = re.compile(rb"0(?:-{0,3}0){7,}")

Window = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Finding:
    """A sensitive span of a string: ``text[start:end]`` found by ``detector``."""

    start: int
    end: int
    detector: Detector
    # The detector's place in the configured order: of two findings of one span, the earlier names it.
    rank: int = 0


class _Facts:
    """What several detectors' cheap tests want to know about one string, each worked out at most once."""

    __slots__ = ("_ascii", "_clusters", "_digits", "_lower", "_number_view", "_run_view", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._ascii: bytes | None = None
        self._digits = -1
        self._lower: str | None = None
        self._number_view: bytes | None = None
        self._run_view: bytes | None = None
        self._clusters: list[Window] | None = None

    def ascii(self) -> bytes:
        if self._ascii is None:
            self._ascii = self.text.encode("ascii", "replace")
        return self._ascii

    def digits(self) -> int:
        if self._digits < 0:
            ascii_text = self.ascii()
            self._digits = len(ascii_text) - len(ascii_text.translate(None, _DIGITS))
        return self._digits

    def lower(self) -> str | None:
        """The lower-cased text; None in the rare case lower-casing changes its length."""
        if self._lower is None:
            lowered = self.text.lower()
            self._lower = lowered if len(lowered) == len(self.text) else ""
        return self._lower or None

    def number_view(self) -> bytes:
        if self._number_view is None:
            self._number_view = self.ascii().translate(_NUMBER_VIEW)
        return self._number_view

    def run_view(self) -> bytes:
        if self._run_view is None:
            self._run_view = self.ascii().translate(_RUN_VIEW)
        return self._run_view

    def digit_clusters(self) -> list[Window]:
        """Every cluster of eight or more digits at most three separators apart, as (start, end)."""
        if self._clusters is None:
            self._clusters = [match.span() for match in _DIGIT_CLUSTER.finditer(self.number_view())]
        return self._clusters


class _Probe:
    """One detector, compiled, with its cheap tests in front of its regex."""

    __slots__ = (
        "anchors",
        "detector",
        "gates",
        "ignore_case",
        "literals",
        "lowercase",
        "min_digits",
        "min_length",
        "rank",
        "regex",
        "run_needle",
        "value_group",
    )

    def __init__(self, detector: Detector, rank: int) -> None:
        self.detector = detector
        self.rank = rank
        # Copied out of the detector: the scan loop reads them for every probe of every string.
        self.min_length = detector.min_length
        self.gates = detector.gates
        self.min_digits = detector.min_digits
        # A run detector's shortest run is a run every finding of it contains.
        min_run = detector.min_run or (detector.run[0] if detector.run else 0)
        self.run_needle = b"w" * min_run
        self.anchors = detector.anchors
        self.lowercase = detector.lowercase
        # One of these is in every text the probe admits (its gates; else its anchors, if case-sensitive).
        self.literals = self.gates or (() if self.lowercase else self.anchors)
        pattern = detector.pattern
        self.regex = re.compile(pattern, detector.flags) if pattern is not None else None
        # For the rare text whose lower-cased form has another length (some non-ASCII letters).
        ignore_case = detector.flags | re.IGNORECASE
        self.ignore_case = re.compile(pattern, ignore_case) if pattern and detector.lowercase else None
        self.value_group = self.regex is not None and "value" in self.regex.groupindex

    def admits(self, facts: _Facts) -> bool:
        """The cheap tests: a gate literal, enough digits, a long enough run, an anchor (all optional)."""
        text = facts.text
        if self.gates and not _holds_any(text, self.gates):
            return False
        if self.min_digits and facts.digits() < self.min_digits:
            return False
        if self.run_needle and self.run_needle not in facts.run_view():
            return False
        if not self.anchors:
            return True
        subject = facts.lower() if self.lowercase else text
        return subject is None or _holds_any(subject, self.anchors)

    def implied_by(self, other: _Probe) -> bool:
        """Whether this probe admits every text ``other`` admits (long enough for both): its tests, the
        minimum length included, are as weak as ``other``'s or weaker."""
        return (
            self.min_length <= other.min_length
            and self.min_digits <= other.min_digits
            and len(self.run_needle) <= len(other.run_needle)
            and _weaker_literals(self.gates, other.gates)
            and _weaker_literals(self.anchors, other.anchors)
            and (not self.anchors or self.lowercase == other.lowercase)
        )

    def collect(self, facts: _Facts, found: list[Finding]) -> None:
        if self.regex is None:
            self._collect_runs(facts, found)
            return
        subject, regex = facts.text, self.regex
        if self.detector.lowercase:
            lowered = facts.lower()
            if lowered is None:
                # No aligned lower-case view: search the original, case-insensitively, everywhere.
                self._collect_matches(
                    facts.text, subject, self.ignore_case or regex, (0, len(subject)), found
                )
                return
            subject = lowered
        for window in self._windows(facts, subject):
            self._collect_matches(facts.text, subject, regex, window, found)

    def _windows(self, facts: _Facts, subject: str) -> list[Window]:
        detector = self.detector
        if detector.in_clusters:
            view, keep = facts.number_view(), detector.cluster_check
            spans = [
                (start, end + detector.reach)
                for start, end in facts.digit_clusters()
                if keep is None or keep(view, start, end)
            ]
            return _merged(spans, detector.lead, len(subject))
        if detector.view_anchors:
            return _anchor_windows(facts.number_view(), detector.view_anchors, detector.lead, detector.reach)
        if detector.anchors:
            return _anchor_windows(subject, detector.anchors, detector.lead, detector.reach)
        return [(0, len(subject))]

    def _collect_matches(
        self, text: str, subject: str, regex: re.Pattern[str], window: Window, found: list[Finding]
    ) -> None:
        """Every accepted match in ``subject[window]`` (``subject`` is ``text`` or its lower case)."""
        pos, endpos = window
        check = self.detector.check
        while pos < endpos:
            match = regex.search(subject, pos, endpos)
            if match is None:
                return
            start, end = match.span("value") if self.value_group else match.span()
            accepted = end - start if check is None else check(text[start:end])
            if accepted > 0:
                found.append(Finding(start, start + accepted, self.detector, self.rank))
                pos = start + accepted
            else:
                # Rejected (or empty): the next match may start inside this one.
                pos = match.start() + 1

    def _collect_runs(self, facts: _Facts, found: list[Finding]) -> None:
        """Every maximal run of base64 characters (with up to two "=" of padding) of a length in range."""
        shortest, longest = self.detector.run or (1, 1)
        text = facts.text
        view = facts.run_view()
        needle = b"w" * shortest
        check = self.detector.check
        at = view.find(needle)
        while at != -1:
            run = _RUN.match(text, at)
            end = run.end() if run is not None else at + shortest
            padded = end
            while padded < len(text) and padded - end < 2 and text[padded] == "=":
                padded += 1
            # A data: URI's payload is content, not a key.
            data_uri = text.endswith("base64,", 0, at)
            if (
                padded - at <= longest
                and not data_uri
                and (check is None or check(text[at:padded]) == padded - at)
            ):
                found.append(Finding(at, padded, self.detector, self.rank))
            at = view.find(needle, end)


class TextScanner:
    """Finds every enabled detector's sensitive spans in a string; overlapping spans are merged."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        # Shortest first, so a short string stops at the first detector it is too short for.
        probes = [_Probe(detector, rank) for rank, detector in enumerate(detectors)]
        self._probes = sorted(probes, key=lambda probe: probe.detector.min_length)
        frontier = _frontier(self._probes)
        # The frontier, split: the probes with literals are asked only once one of their literals is
        # known to occur, which a row of ``in`` tests finds out (see ``_may_admit``).
        self._without_literals = [probe for probe in frontier if not probe.literals]
        self._with_literals = [probe for probe in frontier if probe.literals]
        self._literals = _shortest_literals(
            literal for probe in self._with_literals for literal in probe.literals
        )
        self.min_length = self._probes[0].detector.min_length if self._probes else 1 << 62

    def find(self, text: str) -> list[Finding]:
        """The sensitive spans of ``text``, sorted and not overlapping."""
        length = len(text)
        found: list[Finding] = []
        if length < self.min_length:
            return found
        facts = _Facts(text)
        if not self._may_admit(facts):
            return found
        for probe in self._probes:
            if length < probe.min_length:
                break
            if probe.admits(facts):
                probe.collect(facts, found)
        return _unoverlapped(found) if len(found) > 1 else found

    def _may_admit(self, facts: _Facts) -> bool:
        """Whether some probe may admit the text; False proves that none does.

        The probes without literals go first: their tests (a digit count, a run length) work out facts
        the full scan needs anyway, and on long texts one of them nearly always passes. Then a text with
        none of the literals is done without asking the probes that have them one by one.
        """
        if _any_admits(self._without_literals, facts):
            return True
        return _holds_any(facts.text, self._literals) and _any_admits(self._with_literals, facts)


def _weaker_literals(mine: tuple[str, ...], theirs: tuple[str, ...]) -> bool:
    """Whether a text holding one of ``theirs`` (or anything, if there are none) holds one of ``mine``."""
    return not mine or (bool(theirs) and set(theirs) <= set(mine))


def _frontier(probes: list[_Probe]) -> list[_Probe]:
    """The probes whose cheap tests no other probe's imply (of several with the same tests, the first).

    Every other probe admits only texts that one of these admits: when none of them admits a text, no
    probe does, and the scan can stop. (Implication is transitive, so a probe implied by one that is
    itself implied is implied by one on the frontier.)
    """

    def outdone(index: int, probe: _Probe) -> bool:
        for other_index, other in enumerate(probes):
            if other_index == index or not other.implied_by(probe):
                continue
            # ``other`` admits all that ``probe`` admits: strictly more, or the same and listed first.
            if not probe.implied_by(other) or other_index < index:
                return True
        return False

    return [probe for index, probe in enumerate(probes) if not outdone(index, probe)]


def _shortest_literals(literals: Iterable[str]) -> tuple[str, ...]:
    """``literals`` without repeats, and without those holding another (a text with "-----BEGIN" has a
    "-")."""
    unique = dict.fromkeys(literals)
    return tuple(literal for literal in unique if not any(o != literal and o in literal for o in unique))


def _holds_any(text: str, literals: tuple[str, ...]) -> bool:
    # A loop, not any() over a generator: this runs for every probe of every string, at twice the speed.
    for literal in literals:  # noqa: SIM110
        if literal in text:
            return True
    return False


def _any_admits(probes: list[_Probe], facts: _Facts) -> bool:
    """Whether one of ``probes`` (sorted by ``min_length``) admits the text and is not too long for it."""
    length = len(facts.text)
    for probe in probes:
        if length < probe.min_length:
            return False
        if probe.admits(facts):
            return True
    return False


def _anchor_windows(subject: str | bytes, anchors: tuple[Any, ...], lead: int, reach: int) -> list[Window]:
    """The merged spans ``[first - lead, last + reach)`` around runs of nearby anchor occurrences."""
    spans: list[Window] = []
    for anchor in anchors:
        # rfind only sees occurrences that end before its bound; one that starts before ``high`` counts.
        overhang = len(anchor) - 1
        first = subject.find(anchor)
        while first != -1:
            # Grow the span while another occurrence starts inside it: rfind jumps to the last one.
            last, high = first, first + reach
            inner = subject.rfind(anchor, last + 1, high + overhang)
            while inner != -1:
                last, high = inner, inner + reach
                inner = subject.rfind(anchor, last + 1, high + overhang)
            spans.append((first, high))
            first = subject.find(anchor, high)
    return _merged(spans, lead, len(subject))


def _merged(spans: list[Window], lead: int, length: int) -> list[Window]:
    """``(start, end)`` spans widened by ``lead`` to the left, clipped to ``length``, overlaps merged."""
    spans.sort()
    merged: list[Window] = []
    for start, end in spans:
        low, high = max(0, start - lead), min(length, end)
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _unoverlapped(found: list[Finding]) -> list[Finding]:
    """Overlapping spans become one, named after the one that starts first (or ranks first)."""
    found.sort(key=lambda finding: (finding.start, -finding.end, finding.rank))
    merged = [found[0]]
    for finding in found[1:]:
        last = merged[-1]
        if finding.start < last.end:
            if finding.end > last.end:
                merged[-1] = Finding(last.start, finding.end, last.detector, last.rank)
        else:
            merged.append(finding)
    return merged
