"""Counters and histograms kept as plain numbers, turned into Prometheus families only when scraped.

prometheus_client's own ``Counter`` and ``Histogram`` take a lock and walk their buckets on every
increment, for scrapes from other threads. Here every increment and every scrape run on the gateway's one
event-loop thread, and the request path counts each call three times, so a dict entry and a list slot are
enough; the exposition (names, labels, ``_total``, ``_bucket``/``_sum``/``_count``) is prometheus_client's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

Labels = tuple[str, ...]


class CounterSeries:
    """One counter per label values (``name`` is exposed as ``name_total``)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.counts: dict[Labels, int] = {}

    def inc(self, labels: Labels = ()) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, count in self.counts.items():
            family.add_metric(labels, float(count))
        return family


class Distribution:
    """One histogram's observations: a count per bucket (not cumulative; the last is past every bound)
    and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, bucket_count: int) -> None:
        self.counts = [0] * (bucket_count + 1)
        self.sum = 0.0

    def cumulative(self) -> list[int]:
        """Observations at or under each bound, then all of them (Prometheus's ``le`` counts)."""
        total, running = 0, []
        for count in self.counts:
            total += count
            running.append(total)
        return running


class HistogramSeries:
    """One histogram per label values, with fixed upper bounds in seconds."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must increase")
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(bounds)
        self.series: dict[Labels, Distribution] = {}

    def observe(self, labels: Labels, value: float) -> None:
        distribution = self.series.get(labels)
        if distribution is None:
            distribution = self.series[labels] = Distribution(len(self.bounds))
        # A value equal to a bound belongs to that bound's bucket (``le``): the first bound not below it.
        distribution.counts[bisect_left(self.bounds, value)] += 1
        distribution.sum += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [*(_bound_text(bound) for bound in self.bounds), "+Inf"]
        for labels, distribution in self.series.items():
            buckets = list(zip(edges, map(float, distribution.cumulative()), strict=True))
            family.add_metric(labels, buckets, distribution.sum)
        return family


def _bound_text(bound: float) -> str:
    # As prometheus_client writes most bounds ("0.0005", "1.0", "60.0"); any float repr parses back.
    return repr(float(bound))
