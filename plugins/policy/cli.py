"""``portico policy check``: ask the policy one question, the way the ``policy`` plugin would, and say which
rule decided. For operators writing or changing a policy, and for scripts (exit 0 allow, 1 deny, 2 bad
input)::

    portico policy check --subject bob --object weather/tool/get_forecast --action tools/call
    allow by: p, role:analyst, weather/tool/*, tools/call, allow

``add_policy_commands`` adds the command to the ``portico`` parser; ``run_policy_command`` runs it, with
the policy plugin's options from the gateway config when there is one (``--model`` and ``--policy``
override them). Runnable alone too: ``python -m plugins.policy.cli policy check ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from plugins.policy.engine import PolicyEngine
from plugins.policy.loader import PolicyFileError
from plugins.policy.plugin import PolicyOptions
from proxy.chain import Principal

ALLOW, DENY, BAD_INPUT = 0, 1, 2


def add_policy_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    """Add ``policy check`` to a parser's subcommands (``args.command == "policy"`` when the parent's
    subparsers use ``dest="command"``; ``args.policy_command == "check"``); ``parents`` (e.g. one with
    ``--config``) are added to ``check``."""
    policy = subparsers.add_parser("policy", help="ask the access policy (the policy plugin's files)")
    commands = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        parents=list(parents),
        help="decide one request and show the rule that decided",
        description="Decide one request as the policy plugin would; exit 0 allow, 1 deny, 2 bad input.",
    )
    check.add_argument("--subject", required=True, help="the principal's subject, e.g. alice")
    check.add_argument("--object", required=True, help="backend/kind/name, e.g. weather/tool/get_forecast")
    check.add_argument("--action", required=True, help="the MCP method, e.g. tools/call")
    check.add_argument("--roles", default="", help="the token's roles, comma-separated")
    check.add_argument("--tenant", help="the principal's tenant (the domain, for models with one)")
    check.add_argument("--scopes", default="", help="the token's scopes, comma- or space-separated")
    check.add_argument("--claims", help='the token\'s claims as a JSON object, e.g. \'{"department": "x"}\'')
    check.add_argument("--model", help="the Casbin model file (default: the config's policy plugin's)")
    check.add_argument("--policy", help="the Casbin policy file (default: the config's policy plugin's)")


def run_policy_command(args: argparse.Namespace, options: PolicyOptions | None) -> int:
    """Run the parsed ``policy`` command; ``options`` are the config's policy plugin's, if any. Prints the
    decision (stdout) or what is wrong with the input (stderr) and returns the exit status."""
    if getattr(args, "policy_command", None) != "check":
        return _bad_input("the policy command is: policy check")
    model = args.model or (options.model if options else None)
    policy = args.policy or (options.policy if options else None)
    if not model or not policy:
        return _bad_input("give --model and --policy, or a --config whose plugins include policy")
    try:
        claims = _claims(args.claims)
        engine = PolicyEngine(model, policy, cache_size=0)
    except (ValueError, PolicyFileError) as exc:
        return _bad_input(str(exc))
    principal = Principal(
        subject=args.subject,
        roles=tuple(_split(args.roles)),
        tenant=args.tenant,
        scopes=frozenset(_split(args.scopes.replace(" ", ","))),
        claims=claims,
        kind="cli",
    )
    decision = engine.evaluate(principal, args.object, args.action)
    print(decision.explain())
    return ALLOW if decision.allowed else DENY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portico")
    add_policy_commands(parser.add_subparsers(dest="command", required=True))
    return run_policy_command(parser.parse_args(argv), None)


def _claims(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        claims = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--claims is not JSON: {exc}") from None
    if not isinstance(claims, dict):
        raise ValueError("--claims must be a JSON object")
    return claims


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _bad_input(problem: str) -> int:
    print(f"portico policy: {problem}", file=sys.stderr)
    return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
