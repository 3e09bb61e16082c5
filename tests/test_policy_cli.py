"""``portico policy check``: the decision, the rule that made it, and the exit status; bad input is a
one-line error with status 2. Through the command's functions, and once as a real process."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.policy import PolicyOptions
from plugins.policy.cli import add_policy_commands, run_policy_command

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
RBAC = PolicyOptions(model=str(POLICIES / "rbac_model.conf"), policy=str(POLICIES / "rbac_policy.csv"))
RBAC_FILES = ["--model", RBAC.model, "--policy", RBAC.policy]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="portico")
    add_policy_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["policy", "check", *argv])


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, options: PolicyOptions | None = None
) -> tuple[int, str, str]:
    status = run_policy_command(parse(*argv), options)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_an_allow_names_the_rule_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys,
        "--subject",
        "bob",
        "--object",
        "weather/tool/get_forecast",
        "--action",
        "tools/call",
        *RBAC_FILES,
    )
    assert (status, out, err) == (0, "allow by: p, role:analyst, weather/tool/*, tools/call, allow\n", "")


def test_a_deny_by_rule_and_a_default_deny_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "--subject", "dave", "--object", "notes/tool/add_note", "--action", "tools/call", *RBAC_FILES
    )
    assert (status, out) == (1, "deny by: p, role:contractor, notes/tool/add_note, tools/call, deny\n")
    status, out, _ = run(
        capsys,
        "--subject",
        "mallory",
        "--object",
        "notes/tool/add_note",
        "--action",
        "tools/call",
        *RBAC_FILES,
    )
    assert (status, out) == (1, "deny: no rule matched (default deny)\n")


def test_the_config_options_are_used_and_the_flags_override_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ask = ("--subject", "bob", "--object", "weather/tool/get_weather", "--action", "tools/call")
    assert run(capsys, *ask, options=RBAC)[0] == 0
    (tmp_path / "empty.csv").write_text("# nobody may do anything\n")
    status, out, _ = run(capsys, *ask, "--policy", str(tmp_path / "empty.csv"), options=RBAC)
    assert (status, out) == (1, "deny: no rule matched (default deny)\n")


def test_roles_tenant_claims_and_scopes_reach_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    rbac = ("--subject", "zed", "--object", "notes/tool/add_note", "--action", "tools/call", *RBAC_FILES)
    assert run(capsys, *rbac)[0] == 1
    assert run(capsys, *rbac, "--roles", "role:editor")[0] == 0
    assert run(capsys, *rbac, "--roles", "role:viewer, role:editor,role:contractor")[0] == 1
    domains = [
        "--model",
        str(POLICIES / "rbac_domains_model.conf"),
        "--policy",
        str(POLICIES / "rbac_domains_policy.csv"),
    ]
    ask = ("--subject", "erin", "--object", "notes/tool/add_note", "--action", "tools/call", *domains)
    assert run(capsys, *ask, "--tenant", "acme")[0] == 0
    assert run(capsys, *ask, "--tenant", "globex")[0] == 1
    abac = ["--model", str(POLICIES / "abac_model.conf"), "--policy", str(POLICIES / "abac_policy.csv")]
    ask = ("--subject", "u", "--object", "notes/tool/add_note", "--action", "tools/call", *abac)
    status, out, _ = run(capsys, *ask, "--claims", '{"department": "research"}')
    assert (status, out) == (0, 'allow by: p, r.sub.claims["department"] == "research", notes/*, *, allow\n')
    forecast = ("--subject", "u", "--object", "weather/tool/get_forecast", "--action", "tools/call", *abac)
    assert run(capsys, *forecast, "--scopes", "openid weather:forecast")[0] == 0
    assert run(capsys, *forecast)[0] == 1


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        ((), "give --model and --policy, or a --config whose plugins include policy"),
        (("--model", RBAC.model), "give --model and --policy"),
        (("--model", RBAC.model, "--policy", "/nonexistent/p.csv"), "/nonexistent/p.csv: cannot be read"),
        (("--model", RBAC.policy, "--policy", RBAC.policy), "rbac_policy.csv: not a Casbin model"),
        ((*RBAC_FILES, "--claims", "{oops"), "--claims is not JSON"),
        ((*RBAC_FILES, "--claims", "[1, 2]"), "--claims must be a JSON object"),
    ],
)
def test_bad_input_is_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], problem: str
) -> None:
    status, out, err = run(capsys, "--subject", "bob", "--object", "o", "--action", "a", *argv)
    assert status == 2 and out == ""
    assert err.startswith("portico policy: ") and problem in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_command_needs_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("--subject", "bob")
    assert caught.value.code == 2
    assert "--object" in capsys.readouterr().err


def test_as_a_process() -> None:
    ask = ["--subject", "bob", "--object", "weather/tool/get_forecast", "--action", "tools/call", *RBAC_FILES]
    done = subprocess.run(
        [sys.executable, "-m", "plugins.policy.cli", "policy", "check", *ask],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "allow by: p, role:analyst, weather/tool/*, tools/call, allow\n",
        "",
    )
    # Paths are relative to the current directory, as in the gateway's config.
    relative = ["--model", "policies/rbac_model.conf", "--policy", "policies/rbac_policy.csv"]
    done = subprocess.run(
        [sys.executable, "-m", "plugins.policy.cli", "policy", "check", *ask[:6], *relative],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
