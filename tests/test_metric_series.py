"""The request path's plain counters and histograms, read back through prometheus_client's own exposition
writer and parser, as Prometheus would read them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from proxy.metric_series import CounterSeries, HistogramSeries


class Exposed(Collector):
    def __init__(self, *series: CounterSeries | HistogramSeries) -> None:
        self.series = series

    def collect(self):  # type: ignore[no-untyped-def]
        return [series.family() for series in self.series]


def scraped(*series: CounterSeries | HistogramSeries) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exposed(*series))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_counter_counts_per_label_values() -> None:
    calls = CounterSeries("calls", "Calls.", ("backend", "outcome"))
    for labels in [("a", "ok"), ("a", "ok"), ("b", "ok"), ("a", "error")]:
        calls.inc(labels)
    samples = scraped(calls)
    assert samples[("calls_total", (("backend", "a"), ("outcome", "ok")))] == 2
    assert samples[("calls_total", (("backend", "b"), ("outcome", "ok")))] == 1
    assert samples[("calls_total", (("backend", "a"), ("outcome", "error")))] == 1
    assert len(samples) == 3


def test_a_value_on_a_bound_is_counted_in_that_bounds_bucket() -> None:
    seconds = HistogramSeries("seconds", "Seconds.", ("backend",), (0.001, 0.01, 1.0))
    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 7.0):
        seconds.observe(("a",), value)
    samples = scraped(seconds)

    def bucket(le: str) -> float:
        return samples[("seconds_bucket", (("backend", "a"), ("le", le)))]

    # Cumulative, as "le" means: at or under the bound.
    assert [bucket(le) for le in ("0.001", "0.01", "1.0", "+Inf")] == [2, 4, 6, 7]
    assert samples[("seconds_count", (("backend", "a"),))] == 7
    assert samples[("seconds_sum", (("backend", "a"),))] == pytest.approx(8.5135)


def test_histograms_per_label_values_are_apart() -> None:
    seconds = HistogramSeries("seconds", "Seconds.", ("backend",), (0.1,))
    seconds.observe(("a",), 0.05)
    seconds.observe(("b",), 0.5)
    samples = scraped(seconds)
    assert samples[("seconds_bucket", (("backend", "a"), ("le", "0.1")))] == 1
    assert samples[("seconds_bucket", (("backend", "b"), ("le", "0.1")))] == 0
    assert samples[("seconds_count", (("backend", "b"),))] == 1


def test_bounds_that_do_not_increase_are_refused() -> None:
    with pytest.raises(ValueError, match="increase"):
        HistogramSeries("seconds", "Seconds.", (), (0.1, 0.01))
