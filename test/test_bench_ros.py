"""bench/bench_ros.py's accounting of lost Images: where in time they went missing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
import bench_ros  # noqa: E402

PERIOD_NS = int(1e9 / 30)


def stamps(count, missing=(), start=10 ** 18):
    """Return the stamps of captures 0..count-1 at 30 fps but for those in *missing*."""
    return [start + i * PERIOD_NS for i in range(count) if i not in missing]


def test_holes_are_counted_in_frame_periods_after_the_stamp_before_them():
    got = stamps(60, missing={10, 11, 12, 40})
    gaps = bench_ros.loss_gaps(got, 30.0, 'mock0', 'depth/image_raw')
    assert gaps == [(got[9], 3, 'mock0', 'depth/image_raw'),
                    (got[36], 1, 'mock0', 'depth/image_raw')]
    # Jitter of less than half a period is no hole.
    jittered = [stamp + (PERIOD_NS // 3 if i % 2 else 0) for i, stamp in enumerate(stamps(30))]
    assert bench_ros.loss_gaps(jittered, 30.0, 'mock0', 'depth/image_raw') == []
    assert bench_ros.loss_gaps([], 30.0, 'mock0', 'depth/image_raw') == []


def test_holes_close_in_time_are_one_event_over_devices_and_topics():
    start = 10 ** 18
    topics = {}
    for topic, missing_by_device in (('depth/image_raw', ({15, 16}, {15, 16, 17}, set())),
                                     ('ir/image_raw', ({16}, set(), {90}))):
        gaps = []
        for index, missing in enumerate(missing_by_device):
            gaps += bench_ros.loss_gaps(stamps(120, missing, start), 30.0,
                                        'mock{0}'.format(index), topic)
        topics[topic] = {'gaps': gaps}
    events = bench_ros.loss_events({'topics': topics, 'first_stamp_ns': start})
    assert [(round(t, 2), missing, sorted(devices), sorted(names))
            for t, missing, devices, names in events] == [
        (round(14 / 30, 2), 6, ['mock0', 'mock1'], ['depth/image_raw', 'ir/image_raw']),
        (round(89 / 30, 2), 1, ['mock2'], ['ir/image_raw'])]
