"""The built-in detectors: what a secret or a piece of personal data looks like.

Every pattern is written to run in linear time on any input: quantifiers are bounded, no quantified group
contains another unbounded or ambiguous quantifier, and scans that start inside a run of characters are cut
short by a look-behind, so the engine only tries each run from its start. A group named ``value`` marks the
sensitive part of a labelled match (``AccountKey=<value>``): the label stays readable, the value goes.

The order matters where two detectors find the same text: the replacement is named after the finding
that starts first and, at the same start, after the detector listed first. So the specific formats come
before the heuristics (the entropy test also catches a GitHub token, but would give it a vaguer name).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from plugins.redact import checks

Category = Literal["secrets", "personal", "custom"]


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of sensitive value: a regex, an optional validator, and how it is reported."""

    name: str
    category: Category
    # Regex source; a group named "value" marks the part to replace (default: the whole match). None for
    # a run detector, which looks at every maximal run of base64 characters instead (see ``run``).
    pattern: str | None
    # Given the text to replace, how many of its leading characters are sensitive (0: not a match).
    check: Callable[[str], int] | None = None
    # The shortest text the pattern can match: shorter strings are not scanned at all.
    min_length: int = 1
    # Heuristic detectors are not run on protocol fields that are opaque by design (pagination cursors,
    # progress tokens): those look random on purpose, and the gateway needs them back verbatim.
    heuristic: bool = False
    # An object key matching this regex (searched, case-insensitively) marks its string value as
    # sensitive as a whole, when ``check`` accepts all of it: {"api_key": "..."}.
    field: str | None = None
    # Cheap tests that spare most strings the regex: the text must contain one of ``gates`` (when given)
    # and at least ``min_digits`` digits.
    gates: tuple[str, ...] = ()
    min_digits: int = 0
    # Every match contains one of ``anchors``, starting at most ``lead`` characters after the match starts,
    # and the match ends at most ``reach`` characters after the anchor starts: the regex then only runs in
    # those windows around each anchor.
    anchors: tuple[str, ...] = ()
    # The same, in the scanner's number view of the text: digits are "0", the separators written inside
    # numbers (space - . ( ) /) are "-", upper-case letters "A", "+" stays, everything else is a space.
    view_anchors: tuple[bytes, ...] = ()
    # With ``in_clusters``, the digits of every match lie in one cluster of 8+ digits at most 3 separators
    # apart (in the number view) that ``cluster_check`` accepts; the match starts at most ``lead``
    # characters before the cluster and ends (look-ahead included) at most ``reach`` after it.
    in_clusters: bool = False
    cluster_check: Callable[[bytes, int, int], bool] | None = None
    lead: int = 0
    reach: int = 0
    # For run detectors: the run lengths considered (longer runs are data such as images, not keys).
    run: tuple[int, int] | None = None
    # Every match contains a run of at least this many base64 characters (ASCII letters, digits, + / _ -):
    # a cheap test in the scanner's run view. Never for a ``lowercase`` detector: its regex runs on the
    # lower-cased text, where a non-ASCII letter (the Kelvin sign) can turn into an ASCII one.
    min_run: int = 0
    # The pattern is written in lower case and runs on the lower-cased text (case-insensitive, and much
    # faster than re.IGNORECASE on literal alternatives).
    lowercase: bool = False
    # re flags for the pattern (custom patterns: re.MULTILINE, so ^ and $ hold at each string's edges when
    # the scanner joins strings with newlines).
    flags: int = 0

    def __post_init__(self) -> None:
        if self.min_run and self.lowercase:
            raise ValueError(f"{self.name}: min_run does not hold on lower-cased text")


# Between a label and its value: an optional closing quote (escaped, when JSON sits inside a string),
# then ':' or '=' with a little space around it, then an optional opening quote.
_ASSIGN = r"""\\?["']?[ \t]{0,3}[:=][ \t]{0,3}\\?["']?"""
# Lower case: the labelled patterns run on the lower-cased text, where literal alternatives are fast.
_LABEL_WORDS = (
    r"api[_\-]?key|apikey|secret|secret[_\-]?key|token|password|passwd|passphrase|credential"
    r"|private[_\-]?key|access[_\-]?key|auth[_\-]?key"
)
_BASE64_RUN = (24, 512)


def _whole(pattern: str) -> Callable[[str], int]:
    compiled = re.compile(pattern)

    def check(text: str) -> int:
        return len(text) if compiled.fullmatch(text) else 0

    return check


BUILTIN: tuple[Detector, ...] = (
    Detector(
        "private_key",
        "secrets",
        # A missing END line (a truncated key) still takes everything after BEGIN, up to the bound.
        r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]{0,65536}?-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|[\s\S]{0,65536})",
        min_length=27,
        gates=("-----BEGIN",),
        min_run=10,
    ),
    Detector(
        "jwt",
        "secrets",
        r"ey[A-Za-z0-9_\-]{6,4096}\.ey[A-Za-z0-9_\-]{6,16384}\.[A-Za-z0-9_\-]{0,4096}",
        min_length=18,
        gates=(".ey",),
        min_run=8,
    ),
    Detector(
        "aws_access_key_id",
        "secrets",
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
        min_length=20,
        min_run=20,
    ),
    Detector(
        "aws_secret_access_key",
        "secrets",
        rf"(?:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key){_ASSIGN}"
        r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        check=_whole(r"[A-Za-z0-9/+]{40}"),
        min_length=50,
        field=r"(?:aws_?)?secret_?access_?key$",
        gates=(":", "="),
        anchors=("secret",),
        lead=4,
        reach=100,
        lowercase=True,
    ),
    Detector(
        "google_api_key",
        "secrets",
        r"AIza[0-9A-Za-z_\-]{35}",
        min_length=39,
        gates=("AIza",),
        min_run=39,
    ),
    Detector(
        "azure_key",
        "secrets",
        r"(?:(?:AccountKey|SharedAccessKey)[ \t]{0,3}=[ \t]{0,3}|[?&]sig=)"
        r"(?P<value>[A-Za-z0-9%+/]{16,200}={0,2})",
        check=_whole(r"[A-Za-z0-9%+/]{16,200}={0,2}"),
        min_length=20,
        field=r"(?:account|shared_?access)_?key$",
        gates=("=",),
        anchors=("AccountKey", "SharedAccessKey", "sig="),
        lead=1,
        reach=240,
    ),
    Detector(
        "github_token",
        "secrets",
        r"gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244}",
        min_length=33,
        gates=("_",),
        min_run=33,
    ),
    Detector(
        "gitlab_token",
        "secrets",
        r"gl(?:pat|dt|rt|ptt)-[A-Za-z0-9_\-]{20,64}",
        min_length=25,
        min_run=25,
    ),
    Detector(
        "slack_token",
        "secrets",
        r"xox[abposr]-[A-Za-z0-9\-]{10,250}|xapp-[0-9]-[A-Za-z0-9\-]{10,250}",
        min_length=15,
        # Both prefixes hold a "-": a one-character test is fast on long texts, where looking for "xox"
        # and "xapp-" would take longer than the regex itself.
        gates=("-",),
        min_run=15,
    ),
    Detector(
        "stripe_key",
        "secrets",
        r"(?:sk|rk)_live_[A-Za-z0-9]{16,247}",
        min_length=24,
        gates=("_live_",),
        min_run=24,
    ),
    Detector(
        "bearer_token",
        "secrets",
        r"bearer[ \t]{1,3}(?P<value>[A-Za-z0-9\-._~+/]{16,2048}={0,2})",
        min_length=23,
        anchors=("bearer",),
        reach=2070,
        lowercase=True,
    ),
    Detector(
        "secret_assignment",
        "secrets",
        # The name ends with the word (api_key=, DB_PASSWORD:): secret_name= or tokenizer: do not count.
        rf"(?:{_LABEL_WORDS})s?{_ASSIGN}"
        r"""(?P<value>[^\s"'`,;&<>\[\]{}()\\]{6,512})""",
        check=checks.secret_value,
        min_length=12,
        heuristic=True,
        field=rf"(?:{_LABEL_WORDS})s?$",
        gates=(":", "="),
        # Where the label's last word starts: "key" in private_key, "pass" in password or passphrase.
        anchors=("key", "secret", "token", "pass", "credential"),
        lead=8,
        reach=560,
        lowercase=True,
    ),
    Detector(
        "email",
        "personal",
        r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}"
        r"\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
        min_length=6,
        anchors=("@",),
        lead=64,
        reach=700,
    ),
    Detector(
        "iban",
        "personal",
        r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])",
        check=checks.iban,
        min_length=15,
        min_digits=8,
        # Two capitals and two check digits start every IBAN; 34 characters and 8 spaces at most follow.
        view_anchors=(b"AA00",),
        reach=44,
    ),
    Detector(
        "card_number",
        "personal",
        # Issuer ranges start with 2-6; a number starting with 1 (timestamps, ids) is never a card.
        r"(?<![0-9])[2-6](?:[ \-]?[0-9]){12,18}(?![0-9])",
        check=checks.card_number,
        min_length=13,
        min_digits=13,
        in_clusters=True,
        cluster_check=checks.card_cluster,
        lead=1,
        reach=2,
    ),
    Detector(
        "phone",
        "personal",
        # International (+44 20 7946 0958), North American ((415) 555-2671, 415-555-2671) and national
        # numbers with a trunk 0 and separated groups (020 7946 0958, 06 12 34 56 78). A bare run of
        # digits is never taken for a phone number.
        r"(?<![A-Za-z0-9+])\+[1-9](?:[ .\-]?\(?[0-9]\)?){7,14}(?![0-9])"
        # Neither is the tail of a longer sequence of digit groups (an account number, an IBAN).
        r"|(?<![A-Za-z0-9.+\-])(?<![0-9][ \-])(?:\([2-9][0-9]{2}\)[ ]?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}"
        r"[ .\-][0-9]{4}(?![A-Za-z0-9]|[.\-][0-9])"
        r"|(?<![A-Za-z0-9.+\-])(?<![0-9][ \-])\(?0[1-9][0-9]{0,3}\)?(?:[ \-][0-9]{2,6}){1,4}"
        r"(?![A-Za-z0-9]|[.\-][0-9])",
        check=checks.phone_number,
        min_length=9,
        min_digits=8,
        in_clusters=True,
        cluster_check=checks.phone_cluster,
        lead=3,
        reach=4,
    ),
    Detector(
        "high_entropy_hex",
        "secrets",
        None,
        check=checks.high_entropy_hex,
        min_length=32,
        heuristic=True,
        min_digits=1,
        run=(32, 512),
    ),
    Detector(
        "high_entropy",
        "secrets",
        None,
        check=checks.high_entropy_base64,
        min_length=24,
        heuristic=True,
        min_digits=1,
        run=_BASE64_RUN,
    ),
)

BUILTIN_NAMES = frozenset(detector.name for detector in BUILTIN)
