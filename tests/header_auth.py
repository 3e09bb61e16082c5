"""A test-only authenticator, so tests can be several principals without minting tokens.

``Authorization: Bearer <name>`` makes the principal ``<name>`` (its credential ``token-of-<name>``); no
header is the anonymous principal. Nothing is verified: never use it outside tests. Put
``HEADER_AUTH`` first in a test gateway's ``plugins``.
"""

from __future__ import annotations

from typing import Any

from proxy.chain import ANONYMOUS, Context, Credentials, Handler, Principal
from proxy.jsonrpc import Message

HEADER_AUTH = {"name": "tests.header_auth:BearerIsSubject"}


class BearerIsSubject:
    async def authenticate(self, credentials: Credentials) -> Principal:
        name = (credentials.authorization or "").removeprefix("Bearer ").strip()
        return Principal(subject=name, credential=f"token-of-{name}", kind="test") if name else ANONYMOUS

    def protected_resource(self, path: str, url: str) -> dict[str, Any]:
        return {"resource": url, "authorization_servers": []}

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        return await call_next(ctx, message)
