"""Plots and tables from the benchmark's JSON results: ``python -m bench.report [FILE.json ...]``.

Reads the files ``bench.open_loop`` writes (default: every ``bench/out/*.json`` but ``smoke.json``,
oldest first, so a later run of the same point replaces an earlier one) and writes into ``bench/plots/``:

- ``latency-<scenario>.png``: p50 (solid) and p99 (dashed) latency against offered load, one line per
  mode (transport and system: ``direct``, ``portico`` or a peer gateway), log scales. A hollow marker is
  a point the system did not keep up with (under 95% of the offered calls answered in time).
- ``throughput.png``: the most calls/s each mode answered in each scenario, across the offered rates.
- ``concurrency.png``: closed loop over WebSocket, calls/s and p50/p99 at each number of calls in flight.

It also prints a Markdown table per scenario (and one for the concurrency sweep) for RESULTS.md.
A result file is ``{"rows": [...]}``; each row has ``scenario``, ``load`` ("open" or "closed"),
``transport``, ``system``, ``offered_rate`` or ``concurrency``, ``achieved_rate``, ``p50_ms``,
``p99_ms``, ``errors``, ``timeouts`` and optionally ``gateway_cpu_us_per_call``. ``bench.peers``'s file
(rows with a nested ``result``) is read too: its rows, Portico's included, form the scenario ``peers``,
so each peer is drawn only beside the Portico runs of its own session.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import orjson

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after mpl.use: the backend must be chosen first

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
PLOTS_DIR = REPO / "bench" / "plots"
# Below this share of the offered rate answered in time, a point counts as "fell behind".
KEPT_UP = 0.95
Row = dict[str, Any]


_PEER_TRANSPORTS = {"streamable http": "http", "websocket": "ws"}


def from_peers(row: Row) -> Row | None:
    """A ``bench.peers`` row (a nested ``result``) in this module's shape, under scenario "peers" so
    that peers are only ever drawn beside the Portico runs of their own session; None if it failed."""
    result = row.get("result")
    if not isinstance(result, dict):
        return None
    return {
        **result,
        "scenario": "peers",
        "load": "open",
        "transport": _PEER_TRANSPORTS.get(row["transport"], row["transport"]),
        "system": row["system"],
        "gateway_cpu_us_per_call": row.get("cpu_us_per_call"),
    }


def load_rows(paths: Sequence[Path]) -> list[Row]:
    """Every row of every file; a later file's row for the same point replaces an earlier one's."""
    merged: dict[tuple[Any, ...], Row] = {}
    for path in paths:
        for raw in orjson.loads(path.read_bytes()).get("rows", []):
            row = raw if "scenario" in raw else from_peers(raw)
            if row is None:
                continue
            key = (
                row["scenario"],
                row.get("load", "open"),
                row["transport"],
                row["system"],
                row.get("offered_rate"),
                row.get("concurrency"),
            )
            merged[key] = row
    return list(merged.values())


def mode(row: Row) -> str:
    return f"{row['transport']} {row['system']}"


def kept_up(row: Row) -> bool:
    return bool(row["offered_rate"]) and row["achieved_rate"] >= KEPT_UP * row["offered_rate"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}"


# -- plots ----------------------------------------------------------------------------------------------


def plot_latency(scenario: str, rows: Sequence[Row], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 5))
    by_mode: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_mode[mode(row)].append(row)
    for index, (name, series) in enumerate(sorted(by_mode.items())):
        series.sort(key=lambda r: r["offered_rate"])
        color = f"C{index}"
        for quantile, style in (("p50_ms", "-"), ("p99_ms", "--")):
            points = [r for r in series if r[quantile] is not None]
            rates = [r["offered_rate"] for r in points]
            axes.plot(
                rates, [r[quantile] for r in points], style, color=color, label=f"{name} {quantile[:3]}"
            )
            for r in points:
                axes.plot(
                    r["offered_rate"],
                    r[quantile],
                    "o",
                    color=color,
                    markerfacecolor=color if kept_up(r) else "none",
                )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered load (calls/s)")
    axes.set_ylabel("latency from intended send time (ms)")
    axes.set_title(f"Latency against offered load: {scenario} (hollow: fell behind)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_throughput(rows: Sequence[Row], path: Path) -> None:
    scenarios = sorted({r["scenario"] for r in rows}, key=_scenario_order)
    modes = sorted({mode(r) for r in rows})
    best: dict[tuple[str, str], float] = defaultdict(float)
    for row in rows:
        key = (row["scenario"], mode(row))
        best[key] = max(best[key], row["achieved_rate"])
    figure, axes = plt.subplots(figsize=(9, 5))
    width = 0.8 / max(1, len(modes))
    for index, name in enumerate(modes):
        xs = [i + index * width for i in range(len(scenarios))]
        axes.bar(xs, [best[(s, name)] for s in scenarios], width, label=name, color=f"C{index}")
    axes.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(scenarios))], scenarios)
    axes.set_ylabel("highest achieved calls/s (open loop, answered within the timeout)")
    axes.set_title("Throughput per scenario (the highest achieved rate over the offered rates)")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_concurrency(rows: Sequence[Row], path: Path) -> None:
    levels = sorted({r["concurrency"] for r in rows})
    modes = sorted({mode(r) for r in rows})
    lookup = {(r["concurrency"], mode(r)): r for r in rows}
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / max(1, len(modes))
    for index, name in enumerate(modes):
        xs = [i + index * width for i in range(len(levels))]
        found = [lookup.get((c, name)) for c in levels]
        left.bar(xs, [r["achieved_rate"] if r else 0 for r in found], width, label=name, color=f"C{index}")
        right.bar(
            xs, [r["p50_ms"] or 0 if r else 0 for r in found], width, color=f"C{index}", label=f"{name} p50"
        )
        right.bar(
            xs,
            [(r["p99_ms"] or 0) - (r["p50_ms"] or 0) if r else 0 for r in found],
            width,
            bottom=[r["p50_ms"] or 0 if r else 0 for r in found],
            color=f"C{index}",
            alpha=0.35,
            label=f"{name} p99",
        )
    ticks = [i + width * (len(modes) - 1) / 2 for i in range(len(levels))]
    for axes in (left, right):
        axes.set_xticks(ticks, [f"C={c}" for c in levels])
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend(fontsize="small")
    left.set_ylabel("calls/s")
    left.set_title("Closed loop over WebSocket, empty chain: throughput")
    right.set_yscale("log")
    right.set_ylabel("latency (ms): p50, then up to p99")
    right.set_title("Latency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- tables ---------------------------------------------------------------------------------------------


def _scenario_order(name: str) -> tuple[int, str]:
    known = ["empty", "full", "cache-hit", "peers"]
    return (known.index(name) if name in known else len(known), name)


def _cpu(row: Row) -> str:
    value = row.get("gateway_cpu_us_per_call")
    return "-" if value is None else f"{value:,.0f}"


def _chain(row: Row) -> str:
    counters = row.get("chain") or {}
    if not counters:
        return "-"
    return f"{counters.get('cache_hits', 0):,.0f} / {counters.get('cache_misses', 0):,.0f}"


def open_table(rows: Sequence[Row]) -> str:
    lines = [
        "| transport | offered/s | system | achieved/s | p50 ms | p99 ms | p99.9 ms | failed "
        "| gateway CPU-µs/call | cache hits / misses |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["transport"], r["offered_rate"], r["system"])):
        lines.append(
            f"| {row['transport']} | {row['offered_rate']:,.0f} | {row['system']} "
            f"| {row['achieved_rate']:,.0f} "
            f"| {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {_ms(row.get('p999_ms'))} "
            f"| {row['errors'] + row['timeouts']:,} | {_cpu(row)} | {_chain(row)} |"
        )
    return "\n".join(lines)


def closed_table(rows: Sequence[Row]) -> str:
    lines = [
        "| in flight | system | calls/s | p50 ms | p99 ms | failed | gateway CPU-µs/call |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["concurrency"], r["system"])):
        lines.append(
            f"| {row['concurrency']:,} | {mode(row)} | {row['achieved_rate']:,.0f} | {_ms(row['p50_ms'])} "
            f"| {_ms(row['p99_ms'])} | {row['errors'] + row['timeouts']:,} | {_cpu(row)} |"
        )
    return "\n".join(lines)


def report(rows: Sequence[Row], plots: Path) -> list[str]:
    """Write the plots; return the Markdown tables."""
    plots.mkdir(parents=True, exist_ok=True)
    open_rows = [r for r in rows if r.get("load", "open") == "open"]
    closed_rows = [r for r in rows if r.get("load") == "closed"]
    sections: list[str] = []
    for scenario in sorted({r["scenario"] for r in open_rows}, key=_scenario_order):
        chosen = [r for r in open_rows if r["scenario"] == scenario]
        plot_latency(scenario, chosen, plots / f"latency-{scenario}.png")
        sections.append(f"#### Scenario `{scenario}`\n\n{open_table(chosen)}")
    if open_rows:
        plot_throughput(open_rows, plots / "throughput.png")
    if closed_rows:
        plot_concurrency(closed_rows, plots / "concurrency.png")
        sections.append(
            f"#### Concurrency (closed loop, WebSocket, empty chain)\n\n{closed_table(closed_rows)}"
        )
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="result files (default: bench/out/*.json)")
    parser.add_argument(
        "--plots", type=Path, default=PLOTS_DIR, help="where the PNGs go (default bench/plots)"
    )
    args = parser.parse_args(argv)
    paths = args.files or sorted(
        (p for p in OUT_DIR.glob("*.json") if p.name != "smoke.json"), key=lambda p: p.stat().st_mtime
    )
    rows = load_rows(paths)
    if not rows:
        print("report: no results (run python -m bench.open_loop --sweep first)", file=sys.stderr)
        return 1
    sections = report(rows, args.plots)
    print(f"<!-- from {', '.join(p.name for p in paths)} -->\n")
    print("\n\n".join(sections))
    print(f"\nplots: {', '.join(sorted(p.name for p in args.plots.glob('*.png')))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
