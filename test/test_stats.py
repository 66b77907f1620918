"""The stream statistics helper: windowed rate, percentiles, gaps, bounded memory."""
import math

import pytest
from streamkinect2.stats import percentile, SequenceGaps, Window


def test_rate_and_percentiles_over_the_window():
    window = Window(period=2.0)
    window._started = 0.0
    for i in range(60):  # 30 events a second for 2 s, latencies 1..60 ms
        window.add((i + 1) * 1e-3, now=i / 30.0)
    now = 59 / 30.0
    assert window.count(now=now) == 60
    assert window.rate(now=now) == pytest.approx(30.0, rel=0.02)
    assert window.percentile(0.5, now=now) == pytest.approx(0.030)
    assert window.percentile(0.99, now=now) == pytest.approx(0.060)
    assert window.count(period=1.0, now=now) == 31  # the last second only


def test_a_window_keeps_only_its_period_whatever_the_rate():
    # A soak found clients growing: samples older than the period were kept until
    # max_samples, 4096 per stream. Only the period's samples may stay.
    window = Window(period=1.0, max_samples=100000)
    for i in range(10000):
        window.add(0.001, now=i * 0.01)  # 100 s at 100 Hz
    assert len(window._samples) <= 101
    assert window.count(now=99.99) == 101


def test_percentile_is_nearest_rank_and_nan_when_empty():
    assert math.isnan(percentile([], 0.5))
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile([1, 2, 3, 4], 1.0) == 4
    assert percentile([1, 2, 3, 4], 0.0) == 1


def test_gaps_count_missing_frames_and_a_restart_is_no_gap():
    gaps = SequenceGaps()
    assert [gaps.add(s) for s in (5, 6, 9, 10)] == [0, 0, 2, 0]
    assert gaps.missing == 2 and gaps.last == 10
    assert gaps.add(0) == 0 and gaps.missing == 2  # the device restarted
    gaps.reset()
    assert gaps.add(100) == 0 and gaps.missing == 2
