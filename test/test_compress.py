"""The compressors: off the device thread, on the IOLoop, dropping rather than queueing.

And the pairing of colour frames with depth captures, as a unit.
"""
import asyncio
import gc
import threading
import time
import tracemalloc

from blinker import Signal
from conftest import run_async, wait_until
import numpy as np
import pytest
from streamkinect2 import codec
from streamkinect2.client import Client
from streamkinect2.compress import check_color_options, DepthFrameCompressor, FrameCompressor
from streamkinect2.device import ColorFrame, IrFrame
from streamkinect2.mock import DepthFrame, MockKinect
from streamkinect2.pairing import CapturePairing
from streamkinect2.protocol import decode_frame_message, frame_flags, header_stream


class BurstKinect(object):
    """A device that emits frames as fast as its thread can, on demand."""

    on_depth_frame = Signal()

    def __init__(self):
        self.unique_kinect_id = 'burst'

    def burst(self, count):
        pixels = MockKinect.render_frame(0)
        for sequence in range(count):
            self.on_depth_frame.send(self, depth_frame=DepthFrame(pixels, sequence=sequence))


def _decode(message):
    return Client('tcp://127.0.0.1:1').decode_depth_message(list(message.parts))


def test_frames_are_compressed_losslessly_and_emitted_on_the_ioloop_thread():
    async def main():
        received, threads = [], set()
        with MockKinect(fps=60) as kinect, DepthFrameCompressor(kinect) as compressor:
            def handler(sender, compressed_frame):
                received.append(compressed_frame)
                threads.add(threading.get_ident())
            DepthFrameCompressor.on_compressed_frame.connect(handler, compressor)
            assert compressor.kinect is kinect
            await wait_until(lambda: len(received) >= 5, 10, 'compressed frames')
        assert threads == {threading.get_ident()}
        for message in received:
            frame = _decode(message)
            assert np.array_equal(frame.array, MockKinect.render_frame(frame.sequence))
            assert len(message) < frame.array.nbytes / 3
    run_async(main())


def test_overload_drops_frames_and_memory_stays_bounded():
    async def main():
        kinect = BurstKinect()
        compressor = DepthFrameCompressor(kinect)
        emitted = []
        DepthFrameCompressor.on_compressed_frame.connect(
            lambda sender, compressed_frame: emitted.append(len(compressed_frame)),
            compressor, weak=False)
        gc.collect()
        tracemalloc.start()
        # 3000 frames of 424 KiB each (1.2 GiB) pushed while the IOLoop is busy: without
        # frame drop they would all be queued.
        producer = threading.Thread(target=kinect.burst, args=(3000,))
        producer.start()
        producer.join(60)
        assert not producer.is_alive()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        await wait_until(lambda: compressor.frames_out + compressor.frames_dropped >= 3000,
                         10, 'compressor to drain')
        await asyncio.sleep(0.05)
        compressor.close()
        assert compressor.frames_in == 3000
        assert compressor.frames_dropped > 0
        assert compressor.frames_out == len(emitted) > 0
        assert compressor.frames_out + compressor.frames_dropped == 3000
        assert peak < 30 * 2 ** 20, 'peak traced memory {0:.1f} MiB'.format(peak / 2 ** 20)
    run_async(main())


class ReferenceFrame(object):
    """A frame with only the reference API's contract: ``data`` and ``shape``."""

    def __init__(self, pixels):
        self.data = pixels.tobytes()
        self.shape = (pixels.shape[1], pixels.shape[0])


class RaisingData(object):
    """A frame whose ``data`` raises when read."""

    shape = (512, 424)

    @property
    def data(self):
        raise RuntimeError('sensor buffer gone')


def _collect(compressor):
    received = []
    compressor.on_compressed_frame.connect(
        lambda sender, compressed_frame: received.append(compressed_frame), compressor,
        weak=False)
    return received


def test_frames_with_only_the_reference_contract_stream_with_sequence_and_time():
    async def main():
        kinect = BurstKinect()
        with DepthFrameCompressor(kinect) as compressor:
            received = _collect(compressor)
            started = time.time()
            for sequence in range(5):
                pixels = MockKinect.render_frame(sequence)
                kinect.on_depth_frame.send(kinect, depth_frame=ReferenceFrame(pixels))
                await wait_until(lambda: len(received) > sequence, 10, 'frame {0}'.format(
                    sequence))
            assert compressor.is_alive and compressor.frames_failed == 0
        frames = [_decode(message) for message in received]
        assert [f.sequence for f in frames] == list(range(5))  # filled in: the device count
        for frame in frames:
            assert np.array_equal(frame.array, MockKinect.render_frame(frame.sequence))
            assert started - 1 < frame.timestamp < time.time() + 1
    run_async(main())


def test_the_worker_survives_any_frame_and_logs_failures_once(caplog):
    # Before: the error handler itself raised (frame.sequence), the worker thread died
    # and no frame of the device was ever compressed again.
    async def main():
        kinect = BurstKinect()
        bad = [object(), None, RaisingData(), 'text',
               DepthFrame(np.zeros((1, 70000), np.uint16))]  # wider than a header holds
        with DepthFrameCompressor(kinect) as compressor:
            received = _collect(compressor)
            failed = 0
            for round_ in range(3):
                for frame in bad:
                    kinect.on_depth_frame.send(kinect, depth_frame=frame)
                    failed += 1
                    await wait_until(lambda: compressor.frames_failed == failed, 10,
                                     'failure {0} counted'.format(failed))
                kinect.on_depth_frame.send(kinect, depth_frame=DepthFrame(
                    MockKinect.render_frame(round_), sequence=round_))
                await wait_until(lambda: len(received) > round_, 10, 'a good frame after')
            assert compressor.is_alive and compressor.frames_dropped == 0
            assert compressor.frames_out == 3
            assert compressor.last_error
        errors = [r for r in caplog.records if r.name == 'streamkinect2.compress'
                  and r.levelname == 'ERROR']
        assert len(errors) == 1 and errors[0].exc_info, errors
    run_async(main())


def test_a_raising_receiver_does_not_stop_the_others():
    async def main():
        with MockKinect(fps=60) as kinect, DepthFrameCompressor(kinect) as compressor:
            calls = []

            def bad(sender, compressed_frame):
                calls.append(1)
                raise RuntimeError('receiver bug')
            DepthFrameCompressor.on_compressed_frame.connect(bad, compressor)
            received = _collect(compressor)
            await wait_until(lambda: len(received) >= 5, 10, 'frames past a bad receiver')
            assert len(calls) >= 5 and compressor.is_alive
    run_async(main())


# --- pairing, IR and colour ------------------------------------------------------------

TICK = 125000  # ns: libfreenect2's 0.125 ms ticks
HALF = 1000000000 // 60  # half a colour frame period at 30 fps


def _colour(timestamp_ns=0, device_timestamp=0, sequence=1000):
    return ColorFrame(pixels=np.zeros((2, 2, 4), np.uint8), sequence=sequence,
                      timestamp_ns=timestamp_ns, device_timestamp=device_timestamp)


def _ring(tick_ns=TICK, *device_times):
    pairing = CapturePairing(tick_ns)
    for sequence, device_time in enumerate(device_times):
        pairing.add_capture(sequence, 10 ** 12 + sequence, device_time)
    return pairing


def test_pairing_takes_the_nearest_capture_before_or_after():
    pairing = _ring(TICK, 1000, 1266, 1532)
    before, paired = pairing.pair(_colour(device_timestamp=1266 + 10))
    assert paired and before == (1, 10 ** 12 + 1, 1266)
    after, paired = pairing.pair(_colour(device_timestamp=1532 - 20))
    assert paired and after.sequence == 2
    assert (pairing.paired, pairing.unpaired) == (2, 0)


def test_pairing_of_two_equally_near_captures_takes_the_earlier():
    pairing = _ring(TICK, 1000, 1200)
    stamps, paired = pairing.pair(_colour(device_timestamp=1100))  # 12.5 ms from each
    assert paired and stamps.sequence == 0
    # Same on the host clock.
    host = CapturePairing(0)
    host.add_capture(7, 5000000)
    host.add_capture(8, 7000000)
    assert host.pair(_colour(timestamp_ns=6000000))[0].sequence == 7


def test_a_colour_frame_with_no_capture_near_enough_keeps_its_own_stamps_and_is_counted():
    half_ticks = HALF // TICK  # 133 ticks: 16.625 ms
    pairing = _ring(TICK, 1000)
    frame = _colour(timestamp_ns=42, device_timestamp=1000 + 2 * half_ticks, sequence=9)
    stamps, paired = pairing.pair(frame)
    assert not paired and stamps == (9, 42, 1000 + 2 * half_ticks)
    assert not frame.paired  # the device's frame is left as it is
    assert pairing.pair(_colour(device_timestamp=1000 + half_ticks))[1]  # 16.6 ms: paired
    assert not pairing.pair(_colour(device_timestamp=1000 + half_ticks + 1))[1]  # 16.75
    assert not CapturePairing(TICK).pair(_colour(device_timestamp=1000))[1]  # ring empty
    assert (pairing.paired, pairing.unpaired) == (1, 2)


def test_pairing_across_a_wrap_of_the_32_bit_device_clock():
    pairing = _ring(TICK, 2 ** 32 - 300, 2 ** 32 - 34)
    stamps, paired = pairing.pair(_colour(device_timestamp=30))  # 64 ticks after
    assert paired and stamps.sequence == 1
    # And a colour frame stamped just before the wrap, a capture just after it.
    pairing = _ring(TICK, 2 ** 32 - 300, 20)
    stamps, paired = pairing.pair(_colour(device_timestamp=2 ** 32 - 10))
    assert paired and stamps.sequence == 1


def test_pairing_without_a_device_clock_compares_host_time_and_keeps_the_last_eight():
    pairing = CapturePairing(None)
    for sequence in range(12):
        pairing.add_capture(sequence, sequence * 33000000, device_timestamp=0)
    stamps, paired = pairing.pair(_colour(timestamp_ns=11 * 33000000 + 5000000))
    assert paired and stamps.sequence == 11
    assert pairing.pair(_colour(timestamp_ns=4 * 33000000))[0].sequence == 4
    assert not pairing.pair(_colour(timestamp_ns=3 * 33000000))[1]  # left the ring


class StreamKinect(object):
    """A stand-in device with all three streams, emitting on demand."""

    on_depth_frame = Signal()
    on_ir_frame = Signal()
    on_color_frame = Signal()
    streams = ('depth', 'ir', 'color')
    device_tick_ns = TICK

    def __init__(self, name='streams'):
        self.unique_kinect_id = name

    def capture(self, sequence, color=None, color_ticks=0):
        stamp, ticks = 10 ** 18 + sequence * 33333333, 5000 + sequence * 266
        self.on_depth_frame.send(self, depth_frame=DepthFrame(
            MockKinect.render_frame(sequence), sequence=sequence, timestamp_ns=stamp,
            device_timestamp=ticks))
        self.on_ir_frame.send(self, ir_frame=IrFrame(
            MockKinect.render_frame(sequence + 1), sequence=sequence, timestamp_ns=stamp,
            device_timestamp=ticks))
        if color is not None:
            self.on_color_frame.send(self, color_frame=ColorFrame(
                pixels=color, sequence=77, timestamp_ns=stamp + color_ticks * TICK,
                device_timestamp=ticks + color_ticks))


def _scene(width=1920, height=1080):
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[:, :, 0] = x * 255 // width
    pixels[:, :, 1] = y * 255 // height
    pixels[:, :, 2] = 100 + 50 * ((x // 64 + y // 64) % 2)
    pixels[:, :, 3] = 255
    return pixels


def test_ir_frames_go_lossless_marked_as_ir():
    async def main():
        kinect = StreamKinect()
        with FrameCompressor(kinect, 'ir') as compressor:
            received = _collect(compressor)
            kinect.capture(3)
            await wait_until(lambda: received, 10, 'an IR frame')
        header, payload = decode_frame_message(received[0].parts, 1 << 20)
        assert header_stream(header) == 'ir' and header.flags == frame_flags('ir')
        assert header.sequence == 3 and header.codec == codec.CODEC_GRAD_ZSTD
        assert np.array_equal(codec.decode(payload, header.width, header.height, header.codec),
                              MockKinect.render_frame(4))
    run_async(main())


def test_colour_becomes_jpeg_paired_with_the_depth_capture():
    async def main():
        kinect = StreamKinect()
        pixels = _scene()
        with FrameCompressor(kinect, 'color', color_quality=90) as compressor:
            received = _collect(compressor)
            kinect.capture(5, color=pixels, color_ticks=40)  # 5 ms after the capture
            await wait_until(lambda: received, 10, 'a colour frame')
            kinect.capture(6, color=pixels, color_ticks=400)  # 50 ms: no pair
            await wait_until(lambda: len(received) == 2, 10, 'a second colour frame')
            assert (compressor.frames_paired, compressor.frames_unpaired) == (1, 1)
        header, payload = decode_frame_message(received[0].parts, 1 << 22)
        assert header.codec == codec.CODEC_JPEG and (header.width, header.height) == (1920,
                                                                                      1080)
        assert header.flags == frame_flags('color', paired=True)
        assert header.sequence == 5 and header.timestamp_ns == 10 ** 18 + 5 * 33333333
        assert header.device_timestamp == 5000 + 5 * 266 + 40  # the colour camera's own
        codec.check_jpeg(payload, header.width, header.height)
        decoded = ColorFrame(jpeg=bytes(payload), shape=(1920, 1080)).array
        error = np.abs(decoded.astype(np.int16) - pixels[:, :, :3]).mean()
        assert error < 2.0, error
        unpaired, _ = decode_frame_message(received[1].parts, 1 << 22)
        assert unpaired.flags == frame_flags('color') and unpaired.sequence == 77
        assert unpaired.timestamp_ns == 10 ** 18 + 6 * 33333333 + 400 * TICK
    run_async(main())


def test_qhd_halves_the_colour_and_a_sensor_jpeg_is_forwarded_untouched():
    async def main():
        kinect = StreamKinect()
        pixels = _scene()
        sensor_jpeg = codec.encode_jpeg(pixels, 60)
        with FrameCompressor(kinect, 'color', color_resolution='qhd') as compressor:
            assert compressor.color_quality == 75  # the qhd default
            received = _collect(compressor)
            kinect.on_color_frame.send(kinect, color_frame=ColorFrame(pixels=pixels))
            await wait_until(lambda: received, 10, 'a qhd frame')
            kinect.on_color_frame.send(kinect, color_frame=ColorFrame(
                jpeg=sensor_jpeg, shape=(1920, 1080), sequence=12))
            await wait_until(lambda: len(received) == 2, 10, 'the sensor JPEG')
        header, payload = decode_frame_message(received[0].parts, 1 << 22)
        assert (header.width, header.height) == (960, 540)
        codec.check_jpeg(payload, 960, 540)
        decoded = ColorFrame(jpeg=bytes(payload), shape=(960, 540)).array
        error = np.abs(decoded.astype(np.int16) - codec.halve_bgrx(pixels)[:, :, :3]).mean()
        assert error < 3.0, error
        header, payload = decode_frame_message(received[1].parts, 1 << 22)
        assert bytes(payload) == sensor_jpeg  # neither decoded nor encoded again
        assert (header.width, header.height, header.sequence) == (1920, 1080, 12)
    run_async(main())


def test_a_bad_colour_frame_is_counted_and_the_next_one_sent(caplog):
    async def main():
        kinect = StreamKinect()
        with FrameCompressor(kinect, 'color') as compressor:
            received = _collect(compressor)
            bad = (None, 'text', DepthFrame(MockKinect.render_frame(0)),
                   ColorFrame(jpeg=b'not a jpeg', shape=(4, 4)))
            for count, frame in enumerate(bad, 1):
                kinect.on_color_frame.send(kinect, color_frame=frame)
                await wait_until(lambda: compressor.frames_failed == count, 10,
                                 'failure {0}'.format(count))
            assert 'CodecError' in compressor.last_error
            kinect.on_color_frame.send(kinect, color_frame=ColorFrame(pixels=_scene(64, 48)))
            await wait_until(lambda: received, 10, 'a good frame after')
            assert compressor.is_alive
    run_async(main())
    errors = [r for r in caplog.records if r.name == 'streamkinect2.compress']
    assert len(errors) == 1 and 'Color frame compressor' in errors[0].getMessage()


@pytest.mark.parametrize('options', [{'color_quality': 0}, {'color_quality': 101},
                                     {'color_quality': 90.5}, {'color_quality': True},
                                     {'color_resolution': 'sd'}, {'color_resolution': None}])
def test_colour_options_are_checked_up_front(options):
    with pytest.raises(ValueError, match='color_'):
        check_color_options(options.get('color_quality'),
                            options.get('color_resolution', 'hd'))
    with pytest.raises(ValueError, match='color_'):
        FrameCompressor(StreamKinect(), 'color', **options)


def test_frames_without_a_device_timestamp_are_paired_by_host_time():
    # Before: a device that declares a tick but stamps 0 had every colour frame "at
    # distance 0" from every capture, so paired with the oldest one remembered.
    pairing = CapturePairing(TICK)
    for sequence in range(8):
        pairing.add_capture(sequence, sequence * 33000000, device_timestamp=0)
    stamps, paired = pairing.pair(_colour(timestamp_ns=6 * 33000000 + 2000000))
    assert paired and stamps.sequence == 6
    assert not pairing.pair(_colour(timestamp_ns=20 * 33000000))[1]
