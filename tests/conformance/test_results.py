"""The conformance runner's judgement (tests/conformance/results.py), on made-up CLI results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance.report import Run, docs, terminal
from tests.conformance.results import (
    DIRECT,
    ExpectedDifference,
    ExpectedFailure,
    Outcome,
    judge,
    load_expected_differences,
    load_expected_failures,
    read_results,
)
from tests.conformance.run import EXPECTED_DIFFERENCES, PATHS, SPEC_VERSIONS

V = "2026-07-28"
GATEWAY = "gateway/stdio"
LEGACY = "gateway/legacy-only"


def checks(*statuses: tuple[str, str]) -> list[dict[str, str]]:
    return [{"id": check_id, "status": status} for check_id, status in statuses]


def test_read_results_counts_checks_and_falls_back_to_the_summary(tmp_path: Path) -> None:
    folder = tmp_path / "server-tools-list-2026-11-21T09-35-36-263Z"
    folder.mkdir()
    statuses = [("a", "SUCCESS"), ("b", "FAILURE"), ("b", "FAILURE"), ("c", "WARNING"), ("d", "INFO")]
    (folder / "checks.json").write_text(json.dumps(checks(*statuses)))
    log = "✗ tools-list: 1 passed, 2 failed\n✗ server-stateless: 3 passed, 1 failed\n"

    results = read_results(tmp_path, log)

    assert results["tools-list"] == Outcome(1, 2, failing=("b",), warnings=("c",))
    assert results["server-stateless"].failed == 1  # crashed before writing checks.json
    assert results["server-stateless"].failing


def test_a_gateway_result_differs_when_a_check_fails_warns_or_is_skipped_only_there() -> None:
    direct = {"s1": Outcome(3, 0), "s2": Outcome(2, 0), "s3": Outcome(2, 0), "s4": Outcome(2, 0)}
    gateway = {
        "s1": Outcome(2, 1, failing=("x",)),
        "s2": Outcome(1, 0, warnings=("y",)),
        "s3": Outcome(1, 0, skipped=("z",)),
        "s4": Outcome(1, 0),  # a check was only INFO through the gateway: not a difference
    }
    verdict = judge({(V, DIRECT): direct, (V, GATEWAY): gateway}, [V], [GATEWAY], [], {})

    assert [d.scenario for d in verdict.differences] == ["s1", "s2", "s3"]
    assert len(verdict.problems) == 3


def test_a_scenario_missing_on_a_gateway_path_is_a_difference() -> None:
    results = {(V, DIRECT): {"s1": Outcome(2, 0)}, (V, GATEWAY): {}}
    verdict = judge(results, [V], [GATEWAY], [], {})
    assert [(d.scenario, d.gateway) for d in verdict.differences] == [("s1", None)]


def test_direct_failures_must_be_expected_and_expectations_must_not_be_stale() -> None:
    results = {(V, DIRECT): {"fails": Outcome(1, 1, failing=("x",)), "passes": Outcome(2, 0)}}
    expected = [ExpectedFailure("passes", None, "was broken once")]

    problems = judge(results, [V], [], expected, {}).problems

    assert any("fails" in p and "not expected" in p for p in problems)
    assert any("passes" in p and "remove it" in p for p in problems)
    listed = [ExpectedFailure("fails", V, "the fixture cannot")]
    assert judge({(V, DIRECT): {"fails": Outcome(1, 1, failing=("x",))}}, [V], [], listed, {}).problems == []


def test_a_path_that_could_not_run_fails_the_run() -> None:
    results = {(V, DIRECT): {"s1": Outcome(2, 0)}}
    problems = judge(results, [V], [GATEWAY], [], {GATEWAY: "gateway exited with 1"}).problems
    assert problems == [f"{GATEWAY}: could not run: gateway exited with 1"]


def test_expected_failures_need_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "expected-failures.yaml"
    path.write_text("expected_failures:\n  - scenario: tools-list\n")
    with pytest.raises(ValueError, match="reason"):
        load_expected_failures(path)
    path.write_text("expected_failures:\n  - {scenario: tools-list, spec_version: 2026-07-28, reason: why}\n")
    assert load_expected_failures(path) == [ExpectedFailure("tools-list", "2026-07-28", "why")]


def test_the_real_expected_failures_file_loads() -> None:
    load_expected_failures(Path(__file__).with_name("expected-failures.yaml"))


# --- expected differences ---------------------------------------------------------------------

# Through a handshake-era backend, s1 fails check x and warns on check y; s2 is the direct result.
DIRECT_RESULTS = {"s1": Outcome(3, 0), "s2": Outcome(2, 0)}
LEGACY_RESULTS = {"s1": Outcome(1, 1, failing=("x",), warnings=("y",)), "s2": Outcome(2, 0)}
RESULTS = {(V, DIRECT): DIRECT_RESULTS, (V, LEGACY): LEGACY_RESULTS}


def listing(scenario: str = "s1", *checks: str, path: str = LEGACY) -> ExpectedDifference:
    return ExpectedDifference(path, V, scenario, "the backend cannot", checks)


def test_a_listed_difference_does_not_fail_the_run_but_is_shown_with_its_reason() -> None:
    verdict = judge(RESULTS, [V], [LEGACY], [], {}, [listing()])

    assert verdict.problems == []
    assert [(d.scenario, d.expected) for d in verdict.differences] == [("s1", listing())]
    run = Run("0", [V], {DIRECT: "", LEGACY: ""}, RESULTS, [], verdict)
    summary = terminal(run)
    assert "s1: 1/2 (direct 3/3)  [expected]" in summary
    assert "why: the backend cannot" in summary
    assert "OK in" in summary
    page = docs(run)
    section = page.split("## Differences between direct and gateway results, and why")[1]
    assert "| `gateway/legacy-only` | 2026-07-28 | `s1` | any |" in section
    assert "the backend cannot" in section
    assert "| s1 | 3/3 | 1/2 ✗ (≠) |" in page


def test_an_unlisted_difference_still_fails_the_run() -> None:
    listed_elsewhere = [listing(path=GATEWAY), listing("s2")]
    results = {**RESULTS, (V, GATEWAY): DIRECT_RESULTS}

    verdict = judge(results, [V], [GATEWAY, LEGACY], [], {}, listed_elsewhere)

    assert f"{V} {LEGACY} s1: differs from direct" in verdict.problems
    assert [d.expected for d in verdict.differences] == [None]


def test_a_listed_difference_that_no_longer_occurs_is_stale() -> None:
    results = {(V, DIRECT): DIRECT_RESULTS, (V, LEGACY): DIRECT_RESULTS}

    problems = judge(results, [V], [LEGACY], [], {}, [listing()]).problems

    assert problems == [f"{V} {LEGACY} s1: gives the direct result; remove it from expected-differences.yaml"]


def test_a_listing_for_a_path_that_did_not_run_is_not_stale() -> None:
    direct_only = {(V, DIRECT): DIRECT_RESULTS}
    assert judge(direct_only, [V], [], [], {}, [listing()]).problems == []
    unavailable = {LEGACY: "gateway exited with 1"}
    assert judge(direct_only, [V], [LEGACY], [], unavailable, [listing()]).problems == [
        f"{LEGACY}: could not run: gateway exited with 1"
    ]


def test_a_listing_with_check_ids_allows_only_those_checks_to_differ() -> None:
    assert judge(RESULTS, [V], [LEGACY], [], {}, [listing("s1", "x", "y")]).problems == []

    verdict = judge(RESULTS, [V], [LEGACY], [], {}, [listing("s1", "x")])

    assert verdict.problems == [
        f"{V} {LEGACY} s1: check(s) y differ from direct too; "
        "expected-differences.yaml allows only x to differ"
    ]
    assert [d.expected for d in verdict.differences] == [None]
    assert "(direct 3/3)  [expected]" not in terminal(
        Run("0", [V], {DIRECT: "", LEGACY: ""}, RESULTS, [], verdict)
    )


def test_a_listed_check_may_pass_this_time_while_the_entry_still_applies() -> None:
    # Some listed checks depend on timing (a backend process starting); the entry is stale only when
    # nothing it lists differs any more.
    verdict = judge(RESULTS, [V], [LEGACY], [], {}, [listing("s1", "x", "y", "z")])
    assert verdict.problems == []
    assert [d.expected is not None for d in verdict.differences] == [True]


def test_a_listing_with_check_ids_does_not_cover_a_scenario_missing_on_the_gateway() -> None:
    results = {(V, DIRECT): DIRECT_RESULTS, (V, LEGACY): {"s2": Outcome(2, 0)}}

    assert judge(results, [V], [LEGACY], [], {}, [listing()]).problems == []
    problems = judge(results, [V], [LEGACY], [], {}, [listing("s1", "x")]).problems
    assert len(problems) == 1
    assert "no check id names" in problems[0]


def test_expected_differences_need_a_reason_and_a_known_path_and_version(tmp_path: Path) -> None:
    path = tmp_path / "expected-differences.yaml"
    known = ([GATEWAY, LEGACY], [V])

    def entry(**fields: str) -> str:
        values = {"path": LEGACY, "spec_version": V, "scenario": "s1", "reason": "why", **fields}
        return "  - {" + ", ".join(f"{key}: {value}" for key, value in values.items() if value) + "}\n"

    for bad, message in (
        (entry(reason=""), "reason"),
        (entry(path="gateway/nonesuch"), "gateway/nonesuch"),
        (entry(path=DIRECT), "direct"),
        (entry(spec_version="2024-11-05"), "2024-11-05"),
        (entry(checks="x"), "checks"),
        (entry() + entry(), "twice"),
    ):
        path.write_text("expected_differences:\n" + bad)
        with pytest.raises(ValueError, match=message):
            load_expected_differences(path, *known)
    path.write_text("expected_differences:\n" + entry(checks="[y, x]"))
    assert load_expected_differences(path, *known) == [ExpectedDifference(LEGACY, V, "s1", "why", ("x", "y"))]


def test_the_real_expected_differences_file_loads() -> None:
    gateway_paths = [path for path in PATHS if path != DIRECT]
    load_expected_differences(EXPECTED_DIFFERENCES, gateway_paths, SPEC_VERSIONS)
