"""The mock device: frames, timing, threading and the reference's signal idioms."""
import os
import threading
import time

import numpy as np
import pytest

from streamkinect2 import codec
from streamkinect2.device import (ColorFrame, DEPTH_HEIGHT, DEPTH_WIDTH, IrFrame,
                                  MOCK_CALIBRATION, STREAMS, streams_of)
from streamkinect2.mock import DepthFrame, MockKinect, Recording

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RGBD = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data', 'rgbd',
                                     'kinect2_sync_rgbd.npz'))
needs_rgbd = pytest.mark.skipif(not os.path.exists(RGBD), reason='no ' + RGBD)


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
    assert (big > 4095).mean() > 0.1 and (big == 0).any() and (big == 8000).sum() >= 400


def test_the_depth_scene_has_no_saturated_reading():
    # REP 118: only 0 means no reading; 65535 mm would be a point 65 m away (issue 12).
    for sequence in (0, 1, 59, 2 ** 33):
        assert MockKinect.render_frame(sequence)[1:].max() < 10000


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


# --- streams: depth, IR and colour of one capture -----------------------------------

class Captures(object):
    """Collect every signal a device emits, in order, with the thread it came on."""

    def __init__(self, kinect, count):
        self.kinect, self.count = kinect, count
        self.events, self.threads, self.done = [], set(), threading.Event()
        self.receivers = []
        for signal, name in ((MockKinect.on_depth_frame, 'depth_frame'),
                             (MockKinect.on_ir_frame, 'ir_frame'),
                             (MockKinect.on_color_frame, 'color_frame')):
            def receiver(sender, name=name, **kwargs):
                assert sender is kinect
                self.events.append((name, kwargs[name]))
                self.threads.add(threading.get_ident())
                if sum(1 for e in self.events if e[0] == 'depth_frame') >= count:
                    self.done.set()
            signal.connect(receiver, kinect)
            self.receivers.append((signal, receiver))

    def run(self, timeout=20.0):
        try:
            with self.kinect:
                assert self.done.wait(timeout), 'only {0} events in {1} s'.format(
                    len(self.events), timeout)
        finally:
            for signal, receiver in self.receivers:
                signal.disconnect(receiver, self.kinect)
        return self

    def of(self, name):
        return [frame for kind, frame in self.events if kind == name]


def test_a_mock_offers_every_stream_and_the_real_sensors_calibration():
    kinect = MockKinect()
    assert kinect.streams == STREAMS == streams_of(kinect)
    assert kinect.device_tick_ns == 125000 and kinect.ticks_per_frame == 266
    assert kinect.depth_camera == MOCK_CALIBRATION['depth_camera']
    assert kinect.color_camera == MOCK_CALIBRATION['color_camera']
    assert kinect.ir_to_color == MOCK_CALIBRATION['ir_to_color']
    assert kinect.depth_shift_mm == MOCK_CALIBRATION['depth_shift_mm'] > 0
    kinect.depth_camera['fx'] = 1.0  # a copy: the table stays as it is
    assert MOCK_CALIBRATION['depth_camera']['fx'] > 300
    assert MockKinect(streams=['color', 'depth']).streams == ('depth', 'color')
    assert MockKinect(streams=('depth',)).streams == ('depth',)
    for bad in (('ir',), ('depth', 'sound'), ()):
        with pytest.raises(ValueError, match='streams'):
            MockKinect(streams=bad)
    with pytest.raises(ValueError, match='color_every'):
        MockKinect(color_every=0)


def test_depth_ir_and_colour_of_a_capture_share_sequence_and_stamps():
    captures = Captures(MockKinect(), 6).run()
    assert captures.threads and threading.get_ident() not in captures.threads
    depth, ir, color = (captures.of(n) for n in ('depth_frame', 'ir_frame', 'color_frame'))
    # Each capture: depth, then its IR, then its colour.
    kinds = [kind for kind, _ in captures.events]
    assert kinds[:len(ir) * 3] == ['depth_frame', 'ir_frame', 'color_frame'] * len(ir)
    assert len(color) >= 5
    for d, i, c in zip(depth, ir, color):
        assert isinstance(i, IrFrame) and isinstance(c, ColorFrame)
        assert i.sequence == d.sequence == c.sequence
        assert i.timestamp_ns == d.timestamp_ns == c.timestamp_ns
        assert i.device_timestamp == d.device_timestamp == c.device_timestamp > 0
        assert i.shape == (DEPTH_WIDTH, DEPTH_HEIGHT) and i.array.dtype == np.uint16
        assert np.array_equal(i.array, MockKinect.render_ir(d.sequence))
        assert MockKinect.sequence_of(i.array) == d.sequence
        # Colour as pylibfreenect2 hands it out: BGRX, 1080 x 1920 x 4 uint8.
        assert c.pixels.shape == (1080, 1920, 4) and c.pixels.dtype == np.uint8
        assert c.shape == (1920, 1080) and c.jpeg is None and not c.paired
        assert (c.pixels[:, :, 3] == 255).all()
        assert np.array_equal(c.pixels, MockKinect.render_color(d.sequence))
        assert MockKinect.sequence_of_color(c.pixels) == d.sequence
        assert np.array_equal(c.array, c.pixels[:, :, :3])
    # The device clock: 125 us ticks, 266 a frame at 30 fps.
    assert np.diff([d.device_timestamp for d in depth]).tolist() == [266] * (len(depth) - 1)
    # IR differs from depth: not a copy of the same image.
    assert not np.array_equal(ir[0].array, depth[0].array)


def test_two_mocks_have_different_device_clocks():
    assert MockKinect()._clock_start != MockKinect()._clock_start


def test_colour_code_survives_jpeg_and_half_resolution():
    for sequence in (0, 1, 12345, 2 ** 40 + 7, 2 ** 64 - 1):
        pixels = MockKinect.render_color(sequence)
        for image in (pixels, codec.halve_bgrx(pixels)):
            for quality in (30, 75, 95):
                jpeg = codec.encode_jpeg(image, quality)
                decoded = ColorFrame(jpeg=jpeg, shape=codec.jpeg_size(jpeg)).array
                assert MockKinect.sequence_of_color(decoded) == sequence
                if image is pixels and quality == 95:  # JPEG tolerance of the capture
                    error = np.abs(decoded.astype(int) - pixels[:, :, :3].astype(int))
                    assert error.mean() < 2, error.mean()


def test_an_image_without_the_code_is_refused():
    for image in (np.zeros((1080, 1920, 4), np.uint8), np.full((540, 960), 200, np.uint8),
                  np.zeros((20, 30, 3), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(ValueError):
            MockKinect.sequence_of_color(image)
    damaged = MockKinect.render_color(77)
    # Rows of 32 blocks: bits 0-31, bits 32-63, then the same inverted.
    damaged[:32, :32, :3] = 255 - damaged[:32, :32, :3]  # bit 0 and its inverse swapped
    damaged[64:96, :32, :3] = 255 - damaged[64:96, :32, :3]
    assert MockKinect.sequence_of_color(damaged) == 76  # still consistent: reads 76
    damaged[64:96, :32, :3] = 255 - damaged[64:96, :32, :3]  # now inconsistent
    with pytest.raises(ValueError, match='no mock sequence code'):
        MockKinect.sequence_of_color(damaged)


def test_streams_not_offered_are_never_emitted():
    captures = Captures(MockKinect(fps=100, streams=('depth',)), 5).run()
    assert captures.of('depth_frame') and not captures.of('ir_frame')
    assert not captures.of('color_frame')
    captures = Captures(MockKinect(fps=100, streams=('depth', 'color')), 5).run()
    assert not captures.of('ir_frame') and len(captures.of('color_frame')) >= 4


def test_a_stream_nobody_listens_to_is_not_rendered():
    rendered = []

    def color_source(sequence):
        rendered.append(sequence)
        return MockKinect.render_color(sequence)
    kinect = MockKinect(fps=100, color_source=color_source)
    frames, _ = _collect(kinect, 5)
    assert len(frames) >= 5 and rendered == []
    captures = Captures(MockKinect(fps=100, color_source=color_source), 3).run()
    assert len(rendered) >= 2 and rendered[:len(captures.of('color_frame'))] == [
        c.sequence for c in captures.of('color_frame')]


def test_colour_can_lag_jitter_and_skip_captures():
    def offset(sequence):
        return 400 if sequence % 4 == 2 else -30
    captures = Captures(MockKinect(fps=100, color_offset=offset, color_every=2), 9).run()
    depth = {d.sequence: d for d in captures.of('depth_frame')}
    color = captures.of('color_frame')
    assert len(color) >= 4 and all(c.sequence % 2 == 0 for c in color)
    for c in color:
        d = depth[c.sequence]
        ticks = offset(c.sequence)
        assert c.device_timestamp == d.device_timestamp + ticks
        assert c.timestamp_ns == d.timestamp_ns + ticks * 125000
        assert MockKinect.sequence_of_color(c.pixels) == c.sequence


@pytest.mark.parametrize('signal', ['on_depth_frame', 'on_ir_frame', 'on_color_frame'])
def test_the_thread_survives_a_raising_receiver_of_any_signal(signal, caplog):
    kinect = MockKinect(fps=100)
    raised = []

    def bad(sender, **kwargs):
        raised.append(1)
        raise RuntimeError('receiver bug')
    getattr(MockKinect, signal).connect(bad, kinect)
    try:
        captures = Captures(kinect, 5).run()
    finally:
        getattr(MockKinect, signal).disconnect(bad, kinect)
    assert len(raised) >= 4
    # Every stream still flows, for every capture, despite the raising receiver.
    for name in ('depth_frame', 'ir_frame', 'color_frame'):
        assert len(captures.of(name)) >= 4, name
    assert any(r.exc_info and 'receiver bug' in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize('broken', ['ir_source', 'color_source'])
def test_the_thread_survives_a_failing_ir_or_colour_source(broken, caplog):
    calls = []

    def source(sequence):
        calls.append(sequence)
        if sequence % 2:
            raise RuntimeError('source bug')
        return np.zeros((3, 3, 3), np.float32)  # garbage for both streams
    captures = Captures(MockKinect(fps=200, **{broken: source}), 8).run()
    assert len(calls) >= 7 and len(captures.of('depth_frame')) >= 8
    other = 'color_frame' if broken == 'ir_source' else 'ir_frame'
    assert len(captures.of(other)) >= 7
    assert not captures.of(broken.replace('source', 'frame'))
    errors = [r for r in caplog.records if r.levelname == 'ERROR']
    assert 1 <= len(errors) <= 2, 'logged once per 10 s, not per frame'


def test_rendering_cost_per_frame():
    """Print what each stream costs to make (no timing assertion: see bench/)."""
    figures = {}
    for name, render in (('depth', MockKinect.render_frame), ('ir', MockKinect.render_ir),
                         ('color', MockKinect.render_color)):
        render(0)  # the colour base image is made on first use
        started = time.perf_counter()
        for sequence in range(20):
            frame = render(sequence)
        figures[name] = (time.perf_counter() - started) / 20 * 1000
        assert frame.base is None or frame.base is not render(19).base  # a new array
    print('mock rendering, ms per frame: ' + ', '.join(
        '{0} {1:.2f}'.format(k, v) for k, v in figures.items()))
    assert set(figures) == set(STREAMS)


# --- replay --------------------------------------------------------------------------

@needs_rgbd
def test_replay_plays_the_real_synchronised_sets():
    with np.load(RGBD) as archive:
        depth, ir, grey = archive['depth'], archive['ir'], archive['color']
    kinect = MockKinect.from_recording(RGBD, fps=100)
    assert kinect.streams == STREAMS
    captures = Captures(kinect, 12).run(timeout=30)
    color = {c.sequence: c for c in captures.of('color_frame')}
    irs = {i.sequence: i for i in captures.of('ir_frame')}
    assert len(color) >= 11
    for d in captures.of('depth_frame')[:11]:
        index = d.sequence % len(depth)
        assert np.array_equal(d.array, depth[index])
        assert np.array_equal(irs[d.sequence].array, ir[index])
        c = color[d.sequence]
        assert c.pixels.shape == (1080, 1920, 4)
        for channel in range(3):
            assert np.array_equal(c.pixels[:, :, channel], grey[index])
        assert (c.pixels[:, :, 3] == 255).all()
        assert c.device_timestamp == d.device_timestamp == irs[d.sequence].device_timestamp
    # Fewer streams on request, none that was not recorded.
    assert MockKinect.from_recording(RGBD, streams=('depth', 'ir')).streams == ('depth', 'ir')


def test_replay_of_depth_only_and_bad_recordings(tmp_path):
    frames = np.stack([MockKinect.render_frame(s) for s in range(3)])
    path = str(tmp_path / 'depth.npz')
    np.savez(path, frames=frames)
    kinect = MockKinect.from_recording(path, fps=100)
    assert kinect.streams == ('depth',)
    captures = Captures(kinect, 4).run()
    for d in captures.of('depth_frame'):
        assert np.array_equal(d.array, frames[d.sequence % 3])
    assert not captures.of('ir_frame') and not captures.of('color_frame')
    with pytest.raises(ValueError, match='not recorded'):
        MockKinect.from_recording(path, streams=STREAMS)
    # Recordings that do not fit are refused with the reason.
    bad = {'nothing.npz': {'other': frames},
           'float.npz': {'frames': frames.astype(np.float32)},
           'empty.npz': {'depth': frames[:0]},
           'ir_shape.npz': {'depth': frames, 'ir': frames[:2]},
           'color_count.npz': {'depth': frames, 'color': np.zeros((2, 8, 8), np.uint8)},
           'color_type.npz': {'depth': frames, 'color': np.zeros((3, 8, 8, 2), np.uint8)}}
    for name, arrays in bad.items():
        np.savez(str(tmp_path / name), **arrays)
        with pytest.raises(ValueError):
            Recording.load(str(tmp_path / name))
    # BGR colour is handed out as it is; grey becomes BGRX once per recorded set.
    bgr = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    recording = Recording(frames, color=bgr)
    assert np.array_equal(recording.color(4), bgr[1])
    grey_recording = Recording(frames, color=bgr[:, :, :, 0])
    assert grey_recording.color(1) is grey_recording.color(4)
    with pytest.raises(LookupError):
        recording.ir(0)
