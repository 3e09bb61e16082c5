"""Reading the conformance CLI's results, and judging them.

The CLI (``conformance server --url U --suite all --spec-version V -o DIR``) writes one folder per
scenario, ``DIR/server-<scenario>-<timestamp>/checks.json``: a list of checks, each with an ``id``
and a ``status`` (SUCCESS, FAILURE, WARNING for a broken SHOULD, INFO, SKIPPED). Its stdout ends
with one summary line per scenario it ran, ``✓ name: N passed, M failed``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

DIRECT: Final = "direct"

RESULT_DIR: Final = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
SUMMARY_LINE: Final = re.compile(r"^[✓✗] (?P<scenario>\S+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$")


@dataclass(frozen=True)
class Outcome:
    """One scenario's result on one path at one spec version (check ids by status)."""

    passed: int
    failed: int
    failing: tuple[str, ...] = ()  # FAILURE: a MUST not met
    warnings: tuple[str, ...] = ()  # WARNING: a SHOULD not met
    skipped: tuple[str, ...] = ()  # SKIPPED: could not be evaluated (e.g. a capability not advertised)

    @property
    def total(self) -> int:
        return self.passed + self.failed

    def same_as(self, other: Outcome | None) -> bool:
        """Whether two results agree on every check that did not pass.

        ``passed`` is deliberately not compared: the suite reports some checks as INFO when an
        answer makes them inapplicable (a plain JSON reply where SSE was possible, which servers
        may choose), so a gateway can pass fewer checks without doing anything wrong. A SUCCESS
        that turns into a FAILURE, WARNING or SKIPPED does show up here.
        """
        return other is not None and (self.failed, self.failing, self.warnings, self.skipped) == (
            other.failed,
            other.failing,
            other.warnings,
            other.skipped,
        )

    def fewer_checks_than(self, other: Outcome | None) -> bool:
        """Agrees with ``other`` but passed fewer checks: some were not applicable here."""
        return other is not None and self.same_as(other) and self.passed < other.passed


Results = dict[str, Outcome]  # scenario -> outcome, for one (spec version, path)


def outcome_from_checks(checks: Iterable[Mapping[str, Any]]) -> Outcome:
    statuses = [(str(check.get("id")), check.get("status")) for check in checks]

    def ids(wanted: str) -> tuple[str, ...]:
        return tuple(sorted({name for name, status in statuses if status == wanted}))

    return Outcome(
        passed=sum(status == "SUCCESS" for _, status in statuses),
        failed=sum(status == "FAILURE" for _, status in statuses),
        failing=ids("FAILURE"),
        warnings=ids("WARNING"),
        skipped=ids("SKIPPED"),
    )


def read_results(output_dir: Path, cli_log: str) -> Results:
    """Every scenario the CLI ran: from its ``checks.json``, or, for a scenario that crashed before
    writing one, from its summary line (its failing check then cannot be named)."""
    results: Results = {}
    for checks_file in sorted(output_dir.glob("server-*/checks.json")):
        match = RESULT_DIR.match(checks_file.parent.name)
        if match:
            results[match.group("scenario")] = outcome_from_checks(json.loads(checks_file.read_text()))
    for line in cli_log.splitlines():
        summary = SUMMARY_LINE.match(line.strip())
        if summary and summary.group("scenario") not in results:
            failed = int(summary.group("failed"))
            results[summary.group("scenario")] = Outcome(
                int(summary.group("passed")), failed, ("(no checks.json: see the CLI log)",) if failed else ()
            )
    return results


# --- expected failures --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedFailure:
    scenario: str
    spec_version: str | None  # None: at every spec version
    reason: str

    def covers(self, scenario: str, spec_version: str) -> bool:
        return self.scenario == scenario and self.spec_version in (None, spec_version)


def load_expected_failures(path: Path) -> list[ExpectedFailure]:
    """Read ``expected-failures.yaml``: ``expected_failures:`` a list of {scenario, spec_version?, reason}."""
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("expected_failures") or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected_failures must be a list")
    loaded = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("scenario") or not entry.get("reason"):
            raise ValueError(f"{path}: expected_failures[{index}] needs a scenario and a one-line reason")
        version = entry.get("spec_version")
        loaded.append(
            ExpectedFailure(str(entry["scenario"]), str(version) if version else None, entry["reason"])
        )
    return loaded


# --- expected differences ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedDifference:
    """A gateway path's result for a scenario that may differ from the direct one, and why.

    Acceptable only when the difference is inherent to what the path puts behind the gateway (a
    handshake-era backend cannot do what only the modern era has), never to hide a gateway bug.
    """

    path: str
    spec_version: str
    scenario: str
    reason: str
    checks: tuple[str, ...] = ()  # the only checks that may differ; empty: any may

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.spec_version, self.path, self.scenario)


def load_expected_differences(
    path: Path, gateway_paths: Collection[str], spec_versions: Collection[str]
) -> list[ExpectedDifference]:
    """Read ``expected-differences.yaml``: ``expected_differences:`` a list of {path, spec_version,
    scenario, checks?, reason}. Paths and spec versions must be ones the runner knows, so that a
    misspelt entry is an error rather than one that silently never applies."""
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("expected_differences") or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected_differences must be a list")
    loaded: list[ExpectedDifference] = []
    for index, entry in enumerate(entries):
        where = f"{path}: expected_differences[{index}]"
        if not isinstance(entry, dict) or not all(
            entry.get(key) for key in ("path", "spec_version", "scenario", "reason")
        ):
            raise ValueError(f"{where} needs a path, a spec_version, a scenario and a one-line reason")
        reason = str(entry["reason"]).strip()
        if "\n" in reason:
            raise ValueError(f"{where}: the reason must be one line")
        if str(entry["path"]) not in gateway_paths:
            raise ValueError(f"{where}: path {entry['path']!r} is not one of {', '.join(gateway_paths)}")
        if str(entry["spec_version"]) not in spec_versions:
            raise ValueError(
                f"{where}: spec_version {entry['spec_version']} is not one of {', '.join(spec_versions)}"
            )
        checks = entry.get("checks") or []
        if not isinstance(checks, list) or not all(isinstance(check, str) and check for check in checks):
            raise ValueError(f"{where}: checks must be a list of check ids")
        listing = ExpectedDifference(
            path=str(entry["path"]),
            spec_version=str(entry["spec_version"]),  # YAML reads an unquoted 2026-07-28 as a date
            scenario=str(entry["scenario"]),
            reason=reason,
            checks=tuple(sorted(set(checks))),
        )
        if any(other.key == listing.key for other in loaded):
            raise ValueError(f"{where}: {' '.join(listing.key)} is listed twice")
        loaded.append(listing)
    return loaded


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """A gateway path whose result for a scenario is not the direct one."""

    spec_version: str
    path: str
    scenario: str
    gateway: Outcome | None  # None: the scenario did not run on this path
    direct: Outcome | None
    expected: ExpectedDifference | None = None  # the listing that accounts for it, if one does

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.spec_version, self.path, self.scenario)

    def checks(self) -> tuple[str, ...] | None:
        """The ids of the checks whose status differs (failed, warned or was skipped on one side
        only), or None when the difference cannot be put in check ids: the scenario ran on one side
        only, or the same checks failed a different number of times."""
        if self.gateway is None or self.direct is None:
            return None
        found, direct = self.gateway, self.direct
        changed: set[str] = set()
        for here, there in (
            (found.failing, direct.failing),
            (found.warnings, direct.warnings),
            (found.skipped, direct.skipped),
        ):
            changed |= set(here) ^ set(there)
        return tuple(sorted(changed)) or None


@dataclass
class Verdict:
    problems: list[str]
    differences: list[Difference]  # every one, including those expected-differences.yaml accounts for
    expected_differences: list[ExpectedDifference] = dataclasses.field(default_factory=list)

    @property
    def unexpected(self) -> list[Difference]:
        return [d for d in self.differences if d.expected is None]


def judge(
    results: Mapping[tuple[str, str], Results],
    spec_versions: Iterable[str],
    gateway_paths: Iterable[str],
    expected: list[ExpectedFailure],
    unavailable: Mapping[str, str],
    expected_differences: Sequence[ExpectedDifference] = (),
) -> Verdict:
    """Everything that makes the run fail: unexpected or stale direct failures, paths that did not
    run, every gateway result that differs from the direct one without ``expected_differences``
    accounting for it, and every listed difference (or listed check) that no longer occurs."""
    gateway_paths = list(gateway_paths)
    spec_versions = list(spec_versions)
    problems = [f"{path}: could not run: {why}" for path, why in unavailable.items()]
    differences: list[Difference] = []
    for version in spec_versions:
        direct = results.get((version, DIRECT), {})
        if DIRECT not in unavailable and not direct:
            problems.append(f"{version} {DIRECT}: the conformance CLI ran no scenario")
        problems += _judge_direct(version, direct, expected)
        for path in gateway_paths:
            if path in unavailable:
                continue
            found = results.get((version, path), {})
            for scenario in sorted(set(direct) | set(found)):
                if scenario not in found or not found[scenario].same_as(direct.get(scenario)):
                    differences.append(
                        Difference(version, path, scenario, found.get(scenario), direct.get(scenario))
                    )
    ran = {scenario for (_, path), found in results.items() if path == DIRECT for scenario in found}
    problems += [
        f"{entry.scenario}: listed as expected to fail but ran at no spec version"
        for entry in expected
        if entry.spec_version is None and entry.scenario not in ran and DIRECT not in unavailable
    ]
    differences, listing_problems = _apply_listings(differences, expected_differences)
    problems += listing_problems
    if DIRECT not in unavailable:
        differing = {d.key for d in differences}
        problems += [
            f"{' '.join(entry.key)}: gives the direct result; remove it from expected-differences.yaml"
            for entry in expected_differences
            if entry.key not in differing
            and entry.spec_version in spec_versions
            and entry.path in gateway_paths
            and entry.path not in unavailable
        ]
    return Verdict(problems, differences, list(expected_differences))


def _apply_listings(
    differences: list[Difference], listings: Sequence[ExpectedDifference]
) -> tuple[list[Difference], list[str]]:
    """Mark the differences a listing accounts for, and say what is wrong with the others."""
    by_key = {listing.key: listing for listing in listings}
    marked, problems = [], []
    for difference in differences:
        where = " ".join(difference.key)
        listing = by_key.get(difference.key)
        if listing is None:
            problems.append(f"{where}: differs from direct")
            marked.append(difference)
            continue
        if not listing.checks:
            marked.append(dataclasses.replace(difference, expected=listing))
            continue
        changed = difference.checks()
        allowed = ", ".join(listing.checks)
        if changed is None:
            problems.append(
                f"{where}: differs from direct in a way no check id names, and expected-differences.yaml "
                f"allows only {allowed} to differ"
            )
            marked.append(difference)
            continue
        if extra := [check for check in changed if check not in listing.checks]:
            problems.append(
                f"{where}: check(s) {', '.join(extra)} differ from direct too; expected-differences.yaml "
                f"allows only {allowed} to differ"
            )
            marked.append(difference)
        else:
            # Listed checks may differ; one that did not this time is no problem (some depend on timing,
            # e.g. a backend process starting), as long as the entry as a whole still applies.
            marked.append(dataclasses.replace(difference, expected=listing))
    return marked, problems


def _judge_direct(version: str, direct: Results, expected: list[ExpectedFailure]) -> list[str]:
    problems = []
    for scenario, outcome in sorted(direct.items()):
        listed = any(entry.covers(scenario, version) for entry in expected)
        if outcome.failed and not listed:
            problems.append(
                f"{version} {DIRECT} {scenario}: fails ({', '.join(outcome.failing)}) but is not expected to"
            )
        elif listed and not outcome.failed:
            problems.append(f"{version} {DIRECT} {scenario}: passes; remove it from expected-failures.yaml")
    for entry in expected:
        if entry.spec_version == version and entry.scenario not in direct and direct:
            problems.append(
                f"{version} {DIRECT} {entry.scenario}: listed as expected to fail but did not run"
            )
    return problems
