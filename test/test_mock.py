"""The mock device: frames, timing, threading and the reference's signal idioms."""
import threading
import time

import numpy as np
import pytest

from streamkinect2.mock import DepthFrame, MockKinect


def _collect(kinect, count, timeout=10.0):
    frames, threads, done = [], set(), threading.Event()

    def handler(kinect, depth_frame):
        frames.append(depth_frame)
        threads.add(threading.get_ident())
        if len(frames) >= count:
            done.set()
    MockKinect.on_depth_frame.connect(handler, kinect)
    try:
        with kinect:
            assert done.wait(timeout), 'only {0} frames in {1} s'.format(len(frames), timeout)
    finally:
        MockKinect.on_depth_frame.disconnect(handler, kinect)
    return frames, threads


def test_frames_are_kinect2_depth_on_their_own_thread():
    frames, threads = _collect(MockKinect(), 5)
    assert threads and threading.get_ident() not in threads
    for frame in frames:
        assert isinstance(frame, DepthFrame)
        assert frame.shape == (512, 424)
        array = np.frombuffer(frame.data, dtype=np.uint16)
        assert array.size == 512 * 424
        assert frame.array.flags['C_CONTIGUOUS']
    sequences = [f.sequence for f in frames]
    assert sequences == list(range(sequences[0], sequences[0] + len(frames)))


def test_about_thirty_frames_per_second():
    frames, _ = _collect(MockKinect(), 16)
    intervals = np.diff([f.timestamp_ns for f in frames]) / 1e6
    assert 20 < np.median(intervals) < 50, intervals


def test_frames_are_deterministic_and_carry_their_sequence():
    frames, _ = _collect(MockKinect(), 3)
    for frame in frames:
        assert MockKinect.sequence_of(frame.array) == frame.sequence
        assert np.array_equal(frame.array, MockKinect.render_frame(frame.sequence))
    big = MockKinect.render_frame(2 ** 40 + 3)
    assert MockKinect.sequence_of(big) == 2 ** 40 + 3
    # The scene exercises the values the 2014 packing corrupted.
    assert big.max() == 65535 and (big > 4095).mean() > 0.1 and (big == 0).any()


def test_connect_via_decorator_and_ids():
    kinect, other = MockKinect(), MockKinect()
    assert kinect.unique_kinect_id != other.unique_kinect_id
    seen = threading.Event()

    @MockKinect.on_depth_frame.connect_via(kinect)
    def handler(kinect, depth_frame):
        seen.set()
    with kinect:
        assert seen.wait(5)
    MockKinect.on_depth_frame.disconnect(handler, kinect)


def test_repeated_start_and_stop_only_warn(caplog):
    kinect = MockKinect()
    kinect.stop()
    with kinect:
        kinect.start()
        assert kinect.is_running
    assert not kinect.is_running
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert any('not running' in w for w in warnings)
    assert any('already running' in w for w in warnings)


def test_a_failing_handler_does_not_stop_the_device():
    kinect = MockKinect(fps=100)
    calls = []

    def bad(kinect, depth_frame):
        calls.append(1)
        raise RuntimeError('boom')
    MockKinect.on_depth_frame.connect(bad, kinect)
    try:
        frames, _ = _collect(kinect, 3)
    finally:
        MockKinect.on_depth_frame.disconnect(bad, kinect)
    assert len(calls) >= 3


def test_bad_arguments():
    with pytest.raises(ValueError):
        MockKinect(fps=0)
    with pytest.raises(ValueError):
        DepthFrame(np.zeros((4, 4), np.float32))
    assert DepthFrame(bytes(24), shape=(4, 3)).array.shape == (3, 4)


def test_a_tiny_frame_rate_keeps_the_thread_alive_and_stops_promptly(caplog):
    # Before: waiting 1e300 s overflowed, the thread died, and no frame came again.
    kinect = MockKinect(fps=1e-300)
    frames, _ = _collect(kinect, 1)
    with kinect:
        thread = kinect._thread
        assert not thread.join(0.3) and kinect.is_running
        started = time.monotonic()
    assert time.monotonic() - started < 2 and not thread.is_alive()
    assert not [r for r in caplog.records if r.levelname in ('ERROR', 'CRITICAL')]


@pytest.mark.parametrize('fps', [float('inf'), float('nan'), -1, 0])
def test_a_frame_rate_that_is_not_a_positive_number_is_refused(fps):
    with pytest.raises(ValueError, match='fps'):
        MockKinect(fps=fps)


def test_the_device_thread_survives_anything_its_frame_source_does(caplog):
    calls = []

    def source(sequence):
        calls.append(sequence)
        if len(calls) % 3 == 1:
            raise RuntimeError('source bug')
        if len(calls) % 3 == 2:
            return 'not a frame'
        return MockKinect.render_frame(sequence)
    frames, _ = _collect(MockKinect(fps=200, frame_source=source), 5)
    assert len(calls) >= 15
    errors = [r for r in caplog.records if r.levelname == 'ERROR']
    assert 1 <= len(errors) <= 2, 'logged once per 10 s, not per frame'
