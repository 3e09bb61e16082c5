"""The ``auth`` plugin: who is calling, checked at the edge and again on every message.

Configured as ``- name: auth`` with ``options`` (``plugins.auth.options.AuthOptions``):

- ``resource``: the aggregate endpoint's canonical URI (``https://gw.example.com/mcp``); a virtual server's
  URI sits beside it (``https://gw.example.com/servers/notes/mcp``). A JWT's ``aud`` must name the endpoint
  it is presented to (or one of ``audiences``). Unset: derived from the URL the client addressed.
- ``issuers``: trusted issuers, each ``issuer`` (exact ``iss``), optional ``algorithms`` and exactly one of
  ``secret`` (HS256, at least 32 bytes, ``${ENV}`` allowed), ``public_key``, ``public_key_file`` or
  ``jwks_url`` (with ``jwks_min_refresh_seconds``, default 60, and ``jwks_timeout_seconds``, default 5).
- ``leeway_seconds`` (30, at most 300), ``required_claims`` (always ``exp``, ``iss``, ``aud``),
  ``max_token_bytes`` (4096: larger tokens are refused unparsed).
- ``subject_claim`` (``sub``), ``roles_claims`` (``[roles]``; dotted paths), ``role_prefix`` (put before
  each role, e.g. ``role:``, so roles never share a name with subjects), ``tenant_claim``,
  ``scopes_claim`` (``scope``, falling back to ``scp``), ``required_scopes``.
- ``authorization_servers`` (default: the issuers) and ``scopes_supported`` for RFC 9728 metadata.
- ``allow_anonymous`` (false): let clients without any token in, as ``ANONYMOUS``.
- ``token_store`` (``.portico/tokens.sqlite``; null turns gateway tokens off), ``token_key`` (``${ENV}``
  allowed) or ``token_key_file`` (default ``tokens.key`` beside the store), ``verified_cache_size`` (10000).
- ``redis_url`` (inherited from the config's ``redis`` section), ``redis_prefix`` (``portico:auth:``),
  ``redis_timeout_seconds`` (1.0): gateway tokens live in Redis instead of the SQLite file, so every
  instance verifies the same tokens and a revocation is in force on all within a second; every instance
  needs the same ``token_key`` (see ``plugins/auth/shared_tokens.py`` for the trade-offs and for what
  happens while Redis is unreachable).

Tokens come from ``Authorization: Bearer <token>`` or, for browser WebSockets, a subprotocol
``portico.bearer.<token>`` offered together with ``mcp``; never from the query string.
"""

from plugins.auth.options import AuthOptions, IssuerOptions
from plugins.auth.plugin import Auth

plugin = Auth

__all__ = ["Auth", "AuthOptions", "IssuerOptions", "plugin"]
