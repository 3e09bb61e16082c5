"""Showing a conformance run: the terminal summary and ``docs/conformance.md``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tests.conformance.results import (
    DIRECT,
    Difference,
    ExpectedDifference,
    ExpectedFailure,
    Outcome,
    Results,
    Verdict,
)

LEGEND = (
    "Cells are passed/total checks. `✗`: some failed. `≠`: differs from direct (a check failed, "
    "warned or was skipped on one side only). `(≠)`: differs from direct as "
    "`expected-differences.yaml` lists, for the reason it gives. `~`: same as direct, but fewer "
    "checks applied (the suite reported INFO, e.g. for a JSON answer where direct streamed SSE). "
    "`-`: did not run."
)


@dataclass
class Run:
    """Everything a report needs about one run of the runner."""

    conformance_version: str
    spec_versions: Sequence[str]
    paths: Mapping[str, str]  # path -> what it is
    results: Mapping[tuple[str, str], Results]
    expected: list[ExpectedFailure]
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def cell(outcome: Outcome | None, direct: Outcome | None, path: str, expected: bool = False) -> str:
    """One table cell; ``expected``: a listing in expected-differences.yaml accounts for it."""
    if outcome is None:
        return "-"
    text = f"{outcome.passed}/{outcome.total}"
    if outcome.failed:
        text += " ✗"
    if path != DIRECT and not outcome.same_as(direct):
        text += " (≠)" if expected else " ≠"
    elif path != DIRECT and outcome.fewer_checks_than(direct):
        text += " ~"
    return text


def rows(run: Run, version: str) -> list[list[str]]:
    """One row per scenario that ran on any path: its name, then one cell per path."""
    per_path = {path: run.results.get((version, path), {}) for path in run.paths}
    scenarios = sorted({scenario for found in per_path.values() for scenario in found})
    direct = per_path.get(DIRECT, {})
    expected = {d.key for d in run.verdict.differences if d.expected is not None}
    return [
        [
            scenario,
            *(
                cell(
                    per_path[path].get(scenario),
                    direct.get(scenario),
                    path,
                    (version, path, scenario) in expected,
                )
                for path in run.paths
            ),
        ]
        for scenario in scenarios
    ]


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True))
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def describe_difference(difference: Difference) -> list[str]:
    """What the gateway got for a scenario, against what the fixture got directly; for a
    difference expected-differences.yaml accounts for, marked so and with its reason."""
    found, direct = difference.gateway, difference.direct
    head = f"{difference.spec_version}  {difference.path}  {difference.scenario}"
    mark = "  [expected]" if difference.expected else ""
    if found is None or direct is None:
        lines = [f"{head}: ran {'only directly' if found is None else 'only through the gateway'}{mark}"]
    else:
        lines = [f"{head}: {found.passed}/{found.total} (direct {direct.passed}/{direct.total}){mark}"]
        lines += [f"    {line}" for line in changed_checks(found, direct)]
    if difference.expected:
        lines.append(f"    why: {difference.expected.reason}")
    return lines


def changed_checks(found: Outcome, direct: Outcome) -> list[str]:
    """The checks that failed, warned or were skipped on one side only, by status and side."""
    lines = []
    for label, here, there in (
        ("failing", found.failing, direct.failing),
        ("SHOULD not met (warning)", found.warnings, direct.warnings),
        ("skipped", found.skipped, direct.skipped),
    ):
        if only_here := [name for name in here if name not in there]:
            lines.append(f"{label}: {', '.join(only_here)}")
        if only_direct := [name for name in there if name not in here]:
            lines.append(f"{label} directly only: {', '.join(only_direct)}")
    if not lines and found.failed != direct.failed:
        lines.append(f"the same checks failed {found.failed} times (directly {direct.failed})")
    return lines


def what_differs(difference: Difference | None) -> str:
    """One line for the docs' table of expected differences."""
    if difference is None:
        return "nothing in this run: the gateway gives the direct result (a stale entry)"
    found, direct = difference.gateway, difference.direct
    if found is None or direct is None:
        return "ran only directly" if found is None else "ran only through the gateway"
    summary = f"{found.passed}/{found.total} (direct {direct.passed}/{direct.total})"
    return "; ".join([summary, *changed_checks(found, direct)])


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def terminal(run: Run) -> str:
    header = ["scenario", *run.paths]
    parts = []
    for version in run.spec_versions:
        parts += [f"\n== spec version {version} ==", text_table(header, rows(run, version))]
    parts.append("\n" + LEGEND.replace("`", ""))
    if run.verdict.differences:
        parts.append(
            "\nWhere a gateway path differs from direct ([expected]: expected-differences.yaml lists it):"
        )
        for difference in run.verdict.differences:
            parts += describe_difference(difference)
    parts += [f"note: {note}" for note in sorted(run.notes)]
    if run.verdict.problems:
        parts.append(f"\nFAILED ({len(run.verdict.problems)} problems) in {run.seconds:.0f} s:")
        parts += [f"  - {problem}" for problem in run.verdict.problems]
    else:
        listed = len(run.verdict.differences)
        same = f"every gateway path the same{f' but for {listed} listed differences' if listed else ''}"
        parts.append(f"\nOK in {run.seconds:.0f} s: direct results as expected, {same}.")
    return "\n".join(parts)


def docs(run: Run) -> str:
    """The text of ``docs/conformance.md``, from this run's results."""
    header = ["scenario", *run.paths]
    out = [
        "# MCP conformance",
        "",
        "`make conformance` (part of `make test`) runs the official MCP conformance suite,",
        f"[`@modelcontextprotocol/conformance`](https://github.com/modelcontextprotocol/conformance)"
        f" **{run.conformance_version}** (pinned in `tests/interop/setup.sh`), against Portico.",
        "The suite's *server* scenarios act as an MCP client: each calls a server's tools, resources and",
        "prompts by fixed names and checks the answers, one check per requirement of the specification.",
        "They run at both protocol eras: `--spec-version 2025-11-25` (the `initialize` handshake, sessions)",
        "and `--spec-version 2026-07-28` (stateless, per-request `_meta`, multi-round-trip results), with",
        "`--suite all`, which adds the scenarios still pending upstream to the required ones.",
        "",
        "The scenarios need a backend that implements what they call. `tests/conformance/fixture_server.py`",
        "is ours (mcp Python SDK, low-level `Server`; `fixture_features.py` says which scenario wants",
        "which tool). It is run directly and behind the gateway, and every gateway path must give exactly",
        "the direct result: the gateway must neither lose nor break anything the backend does right. The",
        "only exceptions are listed in `tests/conformance/expected-differences.yaml`, each with its reason",
        "(see [below](#differences-between-direct-and-gateway-results-and-why)): differences inherent to",
        "what a path puts behind the gateway, such as a handshake-era backend, never a gateway bug.",
        "",
        "| path | what |",
        "|---|---|",
        *(f"| `{path}` | {what} |" for path, what in run.paths.items()),
        "",
        "## Running it",
        "",
        "```sh",
        "make conformance                                   # installs the pinned suite, then runs",
        ".venv/bin/python -m tests.conformance.run          # the same, once installed",
        ".venv/bin/python -m tests.conformance.run --write-docs   # and rewrites this page",
        "```",
        "",
        "It fails when a scenario fails directly without being listed in",
        "`tests/conformance/expected-failures.yaml`, when a listed one passes, when a gateway path",
        "differs from direct without `tests/conformance/expected-differences.yaml` listing that",
        "difference (and, if the entry names check ids, only those checks differ), or when a listed",
        "difference no longer occurs. Each CLI run's `checks.json` files, its log, and the gateway's and",
        "fixture's stderr are kept under `.cache/conformance/run/` for diagnosis.",
        "",
        "## Results",
        "",
        LEGEND,
    ]
    for version in run.spec_versions:
        out += ["", f"### {version}", "", markdown_table(header, rows(run, version))]
    out += ["", "### Gateway differences not listed as expected", ""]
    if unexpected := run.verdict.unexpected:
        out += ["```", *(line for d in unexpected for line in describe_difference(d)), "```"]
    elif run.verdict.differences:
        out.append("None: every other gateway result is the direct one.")
    else:
        out.append("None: every gateway path gives the direct result.")
    out += ["", *expected_differences_section(run)]
    out += ["", "## Expected failures", ""]
    if run.expected:
        out += [
            f"- `{e.scenario}` ({e.spec_version or 'every spec version'}): {e.reason}" for e in run.expected
        ]
    else:
        out.append("None: the fixture passes every scenario directly, at both spec versions.")
    if run.notes:
        out += ["", "## Notes", "", *(f"- {note}" for note in sorted(run.notes))]
    return "\n".join(out) + "\n"


def expected_differences_section(run: Run) -> list[str]:
    """The docs' section on the differences expected-differences.yaml lists, and why."""
    out = [
        "## Differences between direct and gateway results, and why",
        "",
        "Listed in `tests/conformance/expected-differences.yaml`. An entry is there only when the",
        "difference is inherent to what the path puts behind the gateway (a handshake-era backend cannot",
        "produce what only the modern era has), never to hide a gateway bug. An entry may name the only",
        "checks allowed to differ; one that no longer differs fails the run, like an unlisted difference.",
        "",
    ]
    listings: list[ExpectedDifference] = run.verdict.expected_differences
    if not listings:
        out.append("None listed: every gateway path must give the direct result.")
        return out
    found = {d.key: d for d in run.verdict.differences}
    out += [
        "| path | spec version | scenario | checks allowed to differ | what differs in this run | why |",
        "|---|---|---|---|---|---|",
    ]
    for listing in listings:
        checks = ", ".join(f"`{check}`" for check in listing.checks) or "any"
        out.append(
            f"| `{listing.path}` | {listing.spec_version} | `{listing.scenario}` | {checks} "
            f"| {markdown_cell(what_differs(found.get(listing.key)))} | {markdown_cell(listing.reason)} |"
        )
    return out
