"""The audit plugin's options, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field


@dataclass(frozen=True)
class AuditOptions:
    """Where audit lines go and what they may show (see the ``plugins.audit`` docstring)."""

    # A file to append lines to, rotated by size; None (the default) writes them to standard output.
    file: Annotated[str, Field(min_length=1)] | None = None
    # The size at which the file is rotated (``audit.log`` becomes ``audit.log.1``, and so on).
    max_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    # How many rotated files to keep (at least one: without a backup the file would never shrink).
    backups: Annotated[int, Field(ge=1, le=1000)] = 5
    # Also record the request's params and the reply's result, as the redact plugin left them.
    include_payloads: bool = False
    # How many of the latest records are also kept in memory, for the web console (0: none).
    recent: Annotated[int, Field(ge=0, le=10_000)] = 200
