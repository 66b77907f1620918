"""The compressor: off the device thread, on the IOLoop, dropping rather than queueing."""
import asyncio
import gc
import threading
import time
import tracemalloc

from blinker import Signal
from conftest import run_async, wait_until
import numpy as np
from streamkinect2.client import Client
from streamkinect2.compress import DepthFrameCompressor
from streamkinect2.mock import DepthFrame, MockKinect


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
    DepthFrameCompressor.on_compressed_frame.connect(
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
