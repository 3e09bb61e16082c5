"""Redaction of secrets and personal data in every message, both ways (config name: ``redact``).

Every string under a message's ``params``, ``result`` and ``error`` is scanned (object keys too; never
``jsonrpc``, ``id`` or ``method``): client requests and notifications before they go on, and the replies
that come back; backend notifications and requests (sampling, elicitation) before they reach the client,
and the client's replies. What a detector finds is replaced according to its action:

- ``mask``:  ``[REDACTED:<detector>]``
- ``hash``:  ``[HASHED:<detector>:<first 16 hex digits of HMAC-SHA256(key, value)>]``
- ``block``: the whole message is refused (``RedactionBlocked``, -32064), naming the detector only

Options (see ``RedactOptions``): ``secrets_action`` and ``personal_action`` (default ``mask``),
``actions`` (per detector), ``disabled`` (detector names), ``patterns`` (custom detectors: ``name``,
``regex``, ``action``), ``hash_key``, ``timeout_seconds`` (default 1.0) and ``thread_above_bytes``
(default 65536). Redaction fails closed: an error or a blown time budget blocks the message.

The counts per detector are on the context under ``proxy.chain.REDACTIONS`` and in ``Redact.counts()``.
"""

from __future__ import annotations

from plugins.redact.detectors import BUILTIN_NAMES
from plugins.redact.layer import Redact, RedactionBlocked
from plugins.redact.options import Action, CustomPattern, RedactOptions
from proxy.chain import REDACTIONS

__all__ = [
    "BUILTIN_NAMES",
    "REDACTIONS",
    "Action",
    "CustomPattern",
    "Redact",
    "RedactOptions",
    "RedactionBlocked",
    "plugin",
]

plugin = Redact
