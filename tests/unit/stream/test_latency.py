"""Latency histograms: bucket edges, percentiles never optimistic and at most 12.5% high against numpy,
and budget violations (the publication read back from a real Redis is in tests/integration/test_stream_latency.py)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_tasks.stream.latency import N_BUCKETS, STAGES, SUB, Histogram, StageLatencies, bucket_of, bucket_upper

QUANTILES = (0, 1, 25, 50, 90, 95, 99, 99.9, 100)


def test_every_bucket_edge_maps_back_to_its_bucket_and_the_next_value_to_the_next_bucket() -> None:
    for index in range(N_BUCKETS - 1):
        upper = bucket_upper(index)
        assert bucket_of(upper) == index, index
        assert bucket_of(upper + 1) == index + 1, index
        lower = 0 if index == 0 else bucket_upper(index - 1) + 1
        assert bucket_of(lower) == index
        # The width never exceeds 1/8 of the bucket's lower edge (exact buckets below 8 ns).
        if index < SUB:
            assert lower == upper == index
        else:
            assert (upper + 1 - lower) * SUB <= lower, index
        # Recording inlines bucket_of: the same bucket for both edges.
        hist = Histogram()
        hist.record(lower)
        hist.record(upper)
        assert hist.sparse() == {index: 2}
    assert bucket_of(0) == 0
    assert bucket_of(-5) == 0  # a clock that went backwards lands in the first bucket rather than failing
    assert bucket_of(2**63 - 1) < N_BUCKETS  # any int64 nanosecond count fits


def test_exact_buckets_below_eight_and_known_edges() -> None:
    assert [bucket_upper(bucket_of(v)) for v in range(8)] == list(range(8))
    # 8..15 one value per bucket; 16..31 two values per bucket; 1,000,000 ns lies in [983,040, 1,048,575].
    assert [bucket_upper(bucket_of(v)) for v in (8, 15, 16, 17, 18, 31, 32, 35)] == [8, 15, 17, 17, 19, 31, 35, 35]
    assert bucket_upper(bucket_of(1_000_000)) == 1_048_575
    assert bucket_upper(bucket_of(1_000_000) - 1) == 983_039


def nearest_rank(ordered: list[int], q: float) -> tuple[int, int]:
    """The exact value at percentile q by nearest rank (the definition Histogram.percentile approximates), and the
    next order statistic."""
    rank = int(max(1, -(-len(ordered) * Fraction(str(q)) // 100)))
    return ordered[rank - 1], ordered[min(rank, len(ordered) - 1)]


def check_against_numpy(values: list[int]) -> int:
    hist = Histogram()
    hist.record_many(values)
    ordered = sorted(values)
    array = np.array(values, dtype=np.int64)
    checked = 0
    for q in QUANTILES:
        true, following = nearest_rank(ordered, q)
        # numpy's inverted_cdf is nearest rank too, computed in floating point: where n * q / 100 is a whole number
        # (203,000 * 99.9%) its rounding may take the next order statistic. The exact rank is the truth.
        assert int(np.percentile(array, q, method="inverted_cdf")) in (true, following)
        reported = hist.percentile(q)
        assert reported >= true, (q, reported, true)  # never optimistic
        if true < SUB:
            assert reported == true, (q, reported, true)
        else:
            assert reported <= true * 1.125, (q, reported, true)
        checked += 1
    assert hist.max_ns == max(values)
    assert hist.total == len(values)
    return checked


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=10**10)),
        min_size=1,
        max_size=2000,
    )
)
def test_percentiles_against_numpy_on_random_data(values: list[int]) -> None:
    check_against_numpy(values)


def test_percentiles_against_numpy_on_a_large_heavy_tailed_sample() -> None:
    rng = np.random.default_rng(20240301)
    values = np.concatenate(
        [
            rng.lognormal(mean=11.0, sigma=1.2, size=200_000),  # ~60 us typical, long tail
            rng.integers(0, 8, size=1_000),  # clock-resolution values
            rng.integers(1_000_000, 50_000_000, size=2_000),  # budget violations
        ]
    ).astype(np.int64)
    rng.shuffle(values)
    listed = values.tolist()
    checked = check_against_numpy(listed)
    hist = Histogram()
    hist.record_many(listed)
    ordered = sorted(listed)
    truths = {q: nearest_rank(ordered, q)[0] for q in QUANTILES}
    worst = max(hist.percentile(q) / true - 1 for q, true in truths.items() if true >= SUB)
    print(f"\npercentiles checked: {checked} of {len(QUANTILES)} over {len(listed)} values; worst overstatement {worst:.2%} (bound 12.5%)")
    assert worst <= 0.125


def test_empty_histogram_reports_zero() -> None:
    hist = Histogram()
    assert hist.percentile(99) == 0
    summary = hist.summary()
    assert {k: summary[k] for k in ("count", "p50_ns", "p95_ns", "p99_ns", "max_ns", "over_budget", "budget_ns")} == {
        "count": 0,
        "p50_ns": 0,
        "p95_ns": 0,
        "p99_ns": 0,
        "max_ns": 0,
        "over_budget": 0,
        "budget_ns": None,
    }


def test_percentile_never_exceeds_the_largest_value_recorded() -> None:
    hist = Histogram()
    hist.record_many([1_000_001] * 10)  # its bucket's upper edge is 1,048,575
    assert hist.percentile(50) == hist.percentile(100) == 1_000_001


def test_budget_violations_counted_only_above_the_budget() -> None:
    hist = Histogram(budget_ns=1_000_000)
    hist.record_many([5, 999_999, 1_000_000, 1_000_001, 5_000_000, 40_000])
    assert hist.over_budget == 2
    assert hist.summary()["over_budget"] == 2
    assert hist.summary()["budget_ns"] == 1_000_000
    unbudgeted = Histogram()
    unbudgeted.record(10**12)
    assert unbudgeted.over_budget == 0

    stages = StageLatencies()
    assert {s: stages[s].budget_ns for s in STAGES} == {"process": 1_000_000, "decode": None, "flush": None, "e2e": None}


def test_sparse_round_trip_keeps_percentiles() -> None:
    hist = Histogram()
    hist.record_many([3, 17, 17, 900, 1_500_000, 12_345_678])
    again = Histogram.from_sparse({str(k): v for k, v in hist.sparse().items()}, max_ns=hist.max_ns)
    assert again.total == 6
    assert [again.percentile(q) for q in QUANTILES] == [hist.percentile(q) for q in QUANTILES]


def test_cumulative_counts_at_prometheus_edges_are_conservative() -> None:
    hist = Histogram()
    hist.record_many([10, 100, 1_000, 10_000, 100_000])
    # 1,000 falls in [960, 1,023]: counted at the 1,023 edge, not at 1,000 (never reports a value as faster than it was).
    assert hist.cumulative_at([9, 10, 99, 1_000, 1_023, 10**9]) == [0, 1, 1, 2, 3, 5]
