"""The compressor: off the device thread, on the IOLoop, dropping rather than queueing."""
import asyncio
import gc
import threading
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
