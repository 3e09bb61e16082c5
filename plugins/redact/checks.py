"""Validators that turn a regex candidate into a finding, or reject it.

Each check takes the candidate text a detector's regex matched and returns how many of its leading
characters are the sensitive value (0 rejects the candidate). Most accept all or nothing; the card and
IBAN checks may accept a shorter prefix, because their regexes are greedy and a number is often followed
by more digits or letters that belong to the surrounding text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

_SEPARATORS = " -"

# ISO 13616 IBAN lengths by country code (compact: two letters then the length, space separated).
_IBAN_TABLE = (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 "
    "ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
    "LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 "
    "RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20"
)
IBAN_LENGTHS = {entry[:2]: int(entry[2:]) for entry in _IBAN_TABLE.split(" ")}

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_HEX = re.compile(r"[0-9a-f]+|[0-9A-F]+")
_WORDS = re.compile(r"[A-Z]?[a-z]{3,}|[A-Z]{4,}")
# 31-12-2024, 12.31.2024, 2024 12 31: shaped like a national phone number, but a date.
_DATE = re.compile(r"\d{2}(?:\d{2})?[-./ ]\d{2}[-./ ]\d{2}(?:\d{2})?")
# Dates in the scanner's number view (digits "0", separators "-"): 2024-12-31, 31.12.2024.
_DATE_VIEWS = frozenset({b"0000-00-00", b"00-00-0000"})
_PLACEHOLDERS = frozenset(
    {"undefined", "null", "none", "true", "false", "string", "required", "optional", "example", "redacted"}
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries in its last digit."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def card_number(text: str) -> int:
    """A 13-19 digit Luhn-valid number, or the longest such prefix ending at a digit group's end."""
    for end in _group_ends(text):
        digits = text[:end].replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return end
    return 0


def _group_ends(text: str) -> Iterator[int]:
    # The whole candidate first, then shorter prefixes that end where a separator begins.
    yield len(text)
    for index in range(len(text) - 1, 0, -1):
        if text[index] in _SEPARATORS and text[index - 1] not in _SEPARATORS:
            yield index


def iban(text: str) -> int:
    """An IBAN of its country's length whose check digits pass ISO 7064 mod 97-10."""
    length = IBAN_LENGTHS.get(text[:2])
    if length is None:
        return 0
    end = _end_of_nth_character(text, length)
    # Written without a space, the IBAN must not run on into further letters or digits.
    if end == 0 or (end < len(text) and text[end] != " "):
        return 0
    compact = text[:end].replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return end if int(number) % 97 == 1 else 0


def _end_of_nth_character(text: str, count: int) -> int:
    """The index just after the ``count``-th non-space character of ``text`` (0 if there are fewer)."""
    seen = 0
    for index, char in enumerate(text):
        if char != " ":
            seen += 1
            if seen == count:
                return index + 1
    return 0


def phone_number(text: str) -> int:
    """A phone number with 8-15 digits (E.164's range) that is not a date written with separators."""
    digits = sum(char.isdigit() for char in text)
    if not 8 <= digits <= 15 or _DATE.fullmatch(text):
        return 0
    return len(text)


def card_cluster(view: bytes, start: int, end: int) -> bool:
    """Whether a digit cluster (in the scanner's number view) has enough digits for a card number."""
    return view.count(b"0", start, end) >= 13


def phone_cluster(view: bytes, start: int, end: int) -> bool:
    """Whether a digit cluster (in the scanner's number view) can hold a phone number: after a "+", or
    written with separators and not shaped like a date."""
    if start > 0 and view[start - 1] == ord("+"):
        return True
    cluster = view[start:end]
    return b"-" in cluster and cluster not in _DATE_VIEWS


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character distribution."""
    length = len(text)
    return -sum(count / length * math.log2(count / length) for count in Counter(text).values())


def high_entropy_base64(text: str) -> int:
    """A run of base64 characters mixing upper case, lower case and digits, close to random."""
    if _UUID.fullmatch(text) or not _mixed_classes(text) or _wordlike(text):
        return 0
    # Random text over a 64-symbol alphabet approaches log2(min(n, 64)) bits per character; words,
    # identifiers and paths stay well below that.
    ceiling = math.log2(min(len(text), 64))
    return len(text) if shannon_entropy(text) >= 0.83 * ceiling else 0


def high_entropy_hex(text: str) -> int:
    """A run of hex digits (one case) mixing letters and digits, close to random."""
    if not _HEX.fullmatch(text) or text.isdigit() or text.isalpha():
        return 0
    return len(text) if shannon_entropy(text) >= 3.2 else 0


def _wordlike(text: str) -> bool:
    # Identifiers and paths (getUserById2, src/MainActivity2) are mostly words; in random base64, runs of
    # three lower-case letters are rare enough that they cover under 70% of a key but for 1 in 300.
    return sum(len(word) for word in _WORDS.findall(text)) >= 0.7 * len(text)


def _mixed_classes(text: str) -> bool:
    has_upper = has_lower = has_digit = False
    for char in text:
        if char.isdigit():
            has_digit = True
        elif char.isupper():
            has_upper = True
        elif char.islower():
            has_lower = True
    return has_upper and has_lower and has_digit


def secret_value(text: str) -> int:
    """A value assigned to a secret-looking name: not a placeholder, not one repeated character."""
    if len(text) < 6 or text.lower() in _PLACEHOLDERS or text[0] in "$%{<*[":
        return 0
    return len(text) if shannon_entropy(text) >= 2.0 else 0
