"""Reads a Casbin model and policy file into a ready enforcer, refusing anything Casbin would accept but
evaluate wrongly or silently ignore: a policy line of an unknown type or the wrong length, an effect that
is neither ``allow`` nor ``deny``, a matcher naming something that does not exist.

Casbin itself checks little at load time (an unknown line type is dropped, a misspelt ``deny`` never
applies, a bad matcher fails only when a request arrives), and an operator must be able to trust that the
file in force says what they wrote.
"""

from __future__ import annotations

import ast
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
from casbin.core_enforcer import CoreEnforcer
from casbin.effect import get_effector
from casbin.model import FunctionMap, Model
from casbin.persist.adapter import load_policy_line
from casbin.util import util as casbin_util

from plugins.policy.subject import RoleGraph

# Casbin logs every model it reads at INFO, a line per section; the plugin logs what it loaded itself.
logging.getLogger("casbin").setLevel(logging.WARNING)

# A file's identity for change detection: (modification time in ns, size, inode); None when unreadable.
FileStamp = tuple[int, int, int] | None
# The model's and the policy's stamps.
Stamps = tuple[FileStamp, FileStamp]
EFFECTS = ("allow", "deny")
# What a matcher may read on the subject (r.sub): its own attributes, and a string's methods.
STRING_METHODS = frozenset(name for name in dir(str) if not name.startswith("_"))
SUBJECT_ATTRIBUTES = frozenset({"roles", "tenant", "claims", "scopes", "kind"}) | STRING_METHODS


class PolicyFileError(Exception):
    """A model or policy file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class LoadedPolicy:
    """A model and policy, checked and built into an enforcer, and the file stamps they were read at."""

    enforcer: Any
    # Whether requests carry a domain (``r = sub, dom, obj, act``): the principal's tenant.
    with_domain: bool
    # Whether the matcher uses eval(), which Casbin cannot evaluate without any policy rule.
    uses_eval: bool
    stamps: Stamps
    # The texts it was built from: what is published to other instances, and compared with what they send.
    model_text: str = ""
    policy_text: str = ""

    @property
    def rule_count(self) -> int:
        return len(self.enforcer.model["p"]["p"].policy)


def stamp(path: str) -> FileStamp:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def load_policy_files(model_path: str, policy_path: str) -> LoadedPolicy:
    """Read, check and build; raises ``PolicyFileError`` naming the file at fault. Blocking file IO: the
    plugin calls it in a thread."""
    stamps = (stamp(model_path), stamp(policy_path))
    return build_policy(_read(model_path), _read(policy_path), (model_path, policy_path), stamps)


def build_policy(
    model_text: str, policy_text: str, names: tuple[str, str], stamps: Stamps = (None, None)
) -> LoadedPolicy:
    """Check and build a model and policy given as text (``names``: what errors call them, the model's
    and the policy's); raises ``PolicyFileError``. The same checks whether the text came from the files
    or from another instance."""
    model_path, policy_path = names
    model = _load_model(model_path, model_text)
    _load_rules(model, policy_path, policy_text)
    _check_matcher(model, model_path, policy_path)
    try:
        enforcer = _build_enforcer(model)
    except Exception as exc:
        raise PolicyFileError(policy_path, f"cannot build the roles: {exc}") from None
    with_domain = len(model["r"]["r"].tokens) == 4
    uses_eval = bool(casbin_util.has_eval(model["m"]["m"].value))
    return LoadedPolicy(enforcer, with_domain, uses_eval, stamps, model_text, policy_text)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PolicyFileError(path, f"cannot be read: {exc.strerror or exc}") from None


def _load_model(path: str, text: str) -> Any:
    model = Model()
    try:
        model.load_model_from_text(text)
    except Exception as exc:
        raise PolicyFileError(path, f"not a Casbin model: {exc}") from None
    for key, section in (("r", "request_definition"), ("p", "policy_definition"), ("e", "policy_effect")):
        if key not in _section(model, key):
            raise PolicyFileError(path, f"no [{section}] section with '{key} = ...'")
    if "m" not in _section(model, "m"):
        raise PolicyFileError(path, "no [matchers] section with 'm = ...'")
    request = [token.removeprefix("r_") for token in model["r"]["r"].tokens]
    if len(request) not in (3, 4):
        raise PolicyFileError(
            path,
            f"request_definition 'r = {', '.join(request)}' must be 'sub, obj, act' "
            "or, with tenants as domains, 'sub, dom, obj, act'",
        )
    try:
        get_effector(model["e"]["e"].value)
    except RuntimeError:
        raise PolicyFileError(path, f"unsupported policy_effect 'e = {model['e']['e'].value}'") from None
    for key, assertion in _section(model, "g").items():
        if assertion.params_tokens:
            raise PolicyFileError(path, f"role definition {key} with conditions is not supported")
        if assertion.value.count("_") not in (2, 3):
            raise PolicyFileError(
                path, f"role definition '{key} = {assertion.value}' must be '_, _' or '_, _, _'"
            )
    return model


def _load_rules(model: Any, path: str, text: str) -> None:
    known = {key for section in ("p", "g") for key in _section(model, section)}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind = line.split(",", 1)[0].strip()
        if kind not in known:
            raise PolicyFileError(
                path,
                f"line {number}: unknown rule type {kind!r} (the model defines {', '.join(sorted(known))})",
            )
        if line.count("(") != line.count(")") or line.count("[") != line.count("]"):
            # Casbin splits fields at commas outside brackets; unbalanced ones merge or break fields.
            raise PolicyFileError(path, f"line {number}: unbalanced brackets")
        load_policy_line(line, model)
        rule = model[kind[0]][kind].policy[-1]
        _check_rule(model, kind, rule, f"line {number}", path)


def _check_rule(model: Any, kind: str, rule: list[str], where: str, path: str) -> None:
    assertion = model[kind[0]][kind]
    if kind[0] == "g":
        wanted = assertion.value.count("_")
        names = ", ".join(["_"] * wanted)
    else:
        wanted = len(assertion.tokens)
        names = ", ".join(token.removeprefix(f"{kind}_") for token in assertion.tokens)
    if len(rule) != wanted:
        raise PolicyFileError(path, f"{where}: {kind} takes {wanted} fields ({names}), found {len(rule)}")
    if kind[0] == "p" and f"{kind}_eft" in assertion.tokens:
        effect = rule[assertion.tokens.index(f"{kind}_eft")]
        if effect not in EFFECTS:
            raise PolicyFileError(path, f"{where}: the effect must be allow or deny, not {effect!r}")


def _check_matcher(model: Any, model_path: str, policy_path: str) -> None:
    """Parse the matcher as Casbin will, and check every name in it is a request or policy field, a
    function or a role definition; with eval(), once per policy rule, blaming the rule."""
    matcher = model["m"]["m"].value
    subject = model["r"]["r"].tokens[0]
    known = (
        {token for section in ("r", "p") for a in model[section].values() for token in a.tokens}
        | set(FunctionMap.load_function_map().get_functions())
        | set(_section(model, "g"))
    )
    if not casbin_util.has_eval(matcher):
        _check_expression(matcher, known, subject, model_path, "the matcher")
        return
    p_tokens = model["p"]["p"].tokens
    for rule in model["p"]["p"].policy:
        expanded = _expand_eval(matcher, dict(zip(p_tokens, rule, strict=True)))
        if expanded is None:
            raise PolicyFileError(
                model_path, "the matcher's eval() must name a policy field, as eval(p.rule)"
            )
        _check_expression(expanded, known, subject, policy_path, f"the rule 'p, {', '.join(rule)}'")


def _expand_eval(matcher: str, fields: dict[str, str]) -> str | None:
    names = casbin_util.get_eval_value(matcher)
    if any(name not in fields for name in names):
        return None
    rules = [casbin_util.escape_assertion(fields[name]) for name in names]
    expanded: str = casbin_util.replace_eval(matcher, rules)
    return expanded


def _check_expression(expression: str, known: set[str], subject: str, path: str, what: str) -> None:
    try:
        parsed = CoreEnforcer._get_expression(expression).ast_parsed_value
    except Exception as exc:
        raise PolicyFileError(path, f"{what} is not a valid expression: {exc}") from None
    if parsed is None:
        raise PolicyFileError(path, f"{what} is empty")
    bound = {
        name.id
        for node in ast.walk(parsed)
        if isinstance(node, ast.comprehension)
        for name in ast.walk(node.target)
        if isinstance(name, ast.Name)
    }
    for node in ast.walk(parsed):
        if isinstance(node, ast.Name) and node.id not in known | bound:
            raise PolicyFileError(path, f"{what} uses {_shown(node.id)!r}, which is not defined")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == subject
            and node.attr not in SUBJECT_ATTRIBUTES
        ):
            raise PolicyFileError(
                path,
                f"{what} reads {_shown(subject)}.{node.attr}; the subject has "
                + ", ".join(sorted(SUBJECT_ATTRIBUTES - STRING_METHODS)),
            )


def _shown(name: str) -> str:
    """``r_sub`` as the model wrote it, ``r.sub``."""
    return name.replace("_", ".", 1) if name[:2] in ("r_", "p_") else name


def _build_enforcer(model: Any) -> Any:
    enforcer = casbin.Enforcer(model)
    for key in _section(model, "g"):
        # Only the subject's role definition hears of the token's roles; g2, g3 ... group other things.
        enforcer.set_named_role_manager(key, RoleGraph(claim_roles=key == "g"))
    model.sort_policies_by_subject_hierarchy()
    model.sort_policies_by_priority()
    enforcer.build_role_links()
    return enforcer


def _section(model: Any, key: str) -> dict[str, Any]:
    # Casbin's Model is dict-like without ``in``: a missing section reads as None.
    section: dict[str, Any] = model[key] or {}
    return section
