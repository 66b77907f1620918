"""Counting a stream: windowed rate, latency percentiles, and sequence gaps.

One helper for every place that reports on a stream: the client's per-device
``stats``, the ROS nodes' logs and ``/diagnostics``, the command-line tools and the
benchmarks. Memory is bounded: a window keeps the samples of its period only, and
``max_samples`` at most.
"""
import collections
import math
import threading
import time
from typing import Deque, Iterable, List, Optional, Tuple

__all__ = ['SequenceGaps', 'Window', 'percentile']


def percentile(values: Iterable[float], fraction: float) -> float:
    """Return the *fraction* (0 to 1) percentile of *values* (nearest rank; NaN if none)."""
    ordered = sorted(values)
    if not ordered:
        return float('nan')
    index = min(len(ordered) - 1, max(0, int(math.ceil(fraction * len(ordered))) - 1))
    return ordered[index]


class Window(object):
    """Timestamped samples over the last *period* seconds: rate and percentiles.

    :py:meth:`add` records one event (with an optional value, a latency say) at the
    monotonic time *now*; :py:meth:`rate` is events per second over the window, and
    :py:meth:`percentile` a percentile of the values in it. Thread-safe: one thread may
    add while another reads.
    """

    def __init__(self, period: float = 10.0, max_samples: int = 4096) -> None:
        """Keep samples of the last *period* s, *max_samples* at most."""
        if not period > 0:
            raise ValueError('period must be positive, got {0!r}'.format(period))
        self.period = float(period)
        self._samples: Deque[Tuple[float, Optional[float]]] = collections.deque(
            maxlen=int(max_samples))
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def add(self, value: Optional[float] = None, now: Optional[float] = None) -> None:
        """Record one event with *value* at monotonic time *now* (default: the time now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            samples = self._samples
            samples.append((now, value))
            while now - samples[0][0] > self.period:  # only the window is kept
                samples.popleft()

    def clear(self) -> None:
        """Forget every sample; the rate counts from now."""
        with self._lock:
            self._samples.clear()
            self._started = time.monotonic()

    def _recent(self, period: Optional[float], now: Optional[float]
                ) -> Tuple[List[Tuple[float, Optional[float]]], float, float]:
        period = self.period if period is None else min(float(period), self.period)
        now = time.monotonic() if now is None else now
        with self._lock:
            samples = [s for s in self._samples if now - s[0] <= period]
            span = min(period, now - self._started)
        return samples, period, span

    def count(self, period: Optional[float] = None, now: Optional[float] = None) -> int:
        """Return the number of events in the last *period* s (default: the window)."""
        return len(self._recent(period, now)[0])

    def rate(self, period: Optional[float] = None, now: Optional[float] = None) -> float:
        """Return events per second over the last *period* s (default: the window).

        Over a window that has not been open that long yet, the rate is over the time
        it has been open (and 0.0 before any time has passed).
        """
        samples, period, span = self._recent(period, now)
        span = max(span, 0.0)
        if span <= 0:
            return 0.0
        return len(samples) / min(period, span)

    def values(self, period: Optional[float] = None,
               now: Optional[float] = None) -> List[float]:
        """Return the values recorded in the last *period* s (None values left out)."""
        return [v for _, v in self._recent(period, now)[0] if v is not None]

    def percentile(self, fraction: float, period: Optional[float] = None,
                   now: Optional[float] = None) -> float:
        """Return the *fraction* percentile of the values of the last *period* s."""
        return percentile(self.values(period, now), fraction)


class SequenceGaps(object):
    """Count frames missing from a sequence of frame numbers.

    :py:meth:`add` takes each received sequence number and returns how many numbers
    were skipped since the previous one (0 for the next number). A number that goes
    backwards (a restarted device) starts counting again without counting a gap.
    ``missing`` is the running total; ``last`` the last number seen (None at first).
    """

    __slots__ = ('missing', 'last')

    missing: int
    last: Optional[int]

    def __init__(self) -> None:
        """Start with nothing seen."""
        self.missing = 0
        self.last = None

    def add(self, sequence: int) -> int:
        """Account the frame numbered *sequence*; return the frames missing before it."""
        gap = 0
        if self.last is not None and sequence > self.last:
            gap = sequence - self.last - 1
            self.missing += gap
        self.last = sequence
        return gap

    def reset(self) -> None:
        """Forget the last number (the next one starts a new run)."""
        self.last = None
