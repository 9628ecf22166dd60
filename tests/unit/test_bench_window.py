"""The end-to-end bench's window splits its rate where a fifth of the lines are in, so a
slow start (the lead's question about --sign) shows apart from the steady rate."""

from __future__ import annotations

from bench.scenarios import HEAD_FRACTION, Window
from bench.sink import BenchSink


def _window(arrivals: list[tuple[float, int]]) -> Window:
    window = Window(BenchSink(), "bench.file", 1000, [])
    window.t0, window.lines0 = arrivals[0]
    window.t1 = arrivals[-1][0]
    window.arrivals = arrivals
    return window


def test_a_slow_start_shows_as_a_lower_head_rate_than_the_rest() -> None:
    # 100 lines at open, 200 more in the first second, the other 700 in the next one.
    head, rest = _window([(10.0, 100), (11.0, 300), (12.0, 1000)]).split_rates()
    assert HEAD_FRACTION == 0.2
    assert head == 200.0  # the first frame's lines are the window's start, as in rate()
    assert rest == 700.0


def test_a_steady_run_has_the_same_rate_before_and_after_the_split() -> None:
    arrivals = [(t / 10, 100 * (t + 1)) for t in range(10)]
    window = _window(arrivals)
    head, rest = window.split_rates()
    assert abs(head - rest) < 1e-6
    assert abs(head - window.rate()) < 1e-6


def test_the_split_counts_frames_only_until_the_window_closes() -> None:
    sink = BenchSink()
    window = Window(sink, "bench.file", 30, [])
    for tag, n in (("bench.file", 10), ("other", 5), ("bench.file", 20), ("bench.file", 7)):
        sink.records[tag] += n
        sink.on_frame(sink, tag, n)  # type: ignore[misc]
    assert [count for _, count in window.arrivals] == [10, 30]
    assert window.t1 > 0
