"""The public API as the README uses it, for mypy (test_typecheck.py): not run by pytest.

Every handler is annotated as a user of the library would annotate it, so mypy checks
the library's hints against real use. Running it (``python test/typecheck_usage.py``)
streams from a mock server on loopback for three seconds.
"""
import asyncio
import time
from typing import Dict, List

import numpy as np
import numpy.typing as npt

from streamkinect2 import (Client, DepthFrame, DepthFrameCompressor, EndpointType, MockKinect,
                           ProtocolError, Server, ServerBrowser, ServerInfo)
from streamkinect2.device import DEPTH_HEIGHT, DEPTH_WIDTH, KINECT2_DEFAULT_DEPTH_CAMERA
from streamkinect2.protocol import decode_frame_message, FrameMessage
from streamkinect2.security import CurveClientConfig, CurveServerConfig, load_public_key
from streamkinect2.stats import SequenceGaps, Window


def on_kinect_frame(kinect: MockKinect, depth_frame: DepthFrame) -> None:
    """Handle a device frame (device thread), as the reference's handler_func."""
    pixels: npt.NDArray[np.uint16] = depth_frame.array
    width, height = depth_frame.shape
    assert pixels.shape == (height, width) == (DEPTH_HEIGHT, DEPTH_WIDTH)
    seconds: float = depth_frame.timestamp
    nanoseconds: int = depth_frame.timestamp_ns
    print(kinect.unique_kinect_id, depth_frame.sequence, seconds, nanoseconds,
          depth_frame.device_timestamp)


def secure_server(keys: str) -> Server:
    """Return a CURVE server, checking a client's configuration, from key files in *keys*."""
    server_curve = CurveServerConfig(keys + '/server.key_secret', [keys + '/robot.key'])
    client_curve = CurveClientConfig(keys + '/robot.key_secret', keys + '/server.key')
    server_key: bytes = load_public_key(keys + '/server.key')
    assert client_curve.server_key == server_key
    return Server(address='127.0.0.1', announce=False, curve=server_curve)


async def main() -> None:
    """Serve a mock device on loopback and receive from it, as in the README."""
    kinect = MockKinect()
    MockKinect.on_depth_frame.connect(on_kinect_frame, kinect)
    server = Server(address='127.0.0.1')
    server.add_kinect(kinect)
    clients: List[Client] = []
    gaps: Dict[str, SequenceGaps] = {}
    latency = Window(period=5.0)
    camera: Dict[str, float] = dict(KINECT2_DEFAULT_DEPTH_CAMERA)
    with kinect, server:
        control: str = server.endpoints[EndpointType.control]
        print('serving', control, 'with intrinsics', camera)
        browser = ServerBrowser(address='127.0.0.1')

        @ServerBrowser.on_add_server.connect_via(browser)
        def found(browser: ServerBrowser, server_info: ServerInfo) -> None:
            client = Client(server_info.endpoint, connect_immediately=True)
            clients.append(client)

            @Client.on_add_kinect.connect_via(client)
            def added(client: Client, kinect_id: str) -> None:
                client.enable_depth_frames(kinect_id)
                gaps[kinect_id] = SequenceGaps()

            @Client.on_depth_frame.connect_via(client)
            def frame(client: Client, depth_frame: DepthFrame, kinect_id: str) -> None:
                # depth_frame.array: (424, 512) uint16 millimetres, exactly as captured
                print(kinect_id, depth_frame.sequence, depth_frame.array.max())
                missing: int = gaps[kinect_id].add(depth_frame.sequence)
                latency.add(time.time() - depth_frame.timestamp)
                if missing:
                    print(missing, 'frames missing; rate', latency.rate(),
                          'p99', latency.percentile(0.99))

            client.ping(lambda: print('pong from', client.server_name))

        compressor = DepthFrameCompressor(kinect)

        @DepthFrameCompressor.on_compressed_frame.connect_via(compressor)
        def compressed(compressor: DepthFrameCompressor, compressed_frame: bytes) -> None:
            message = FrameMessage(compressed_frame)
            header, payload = decode_frame_message(message.parts, 1 << 20)
            print('compressed', header.sequence, len(payload), 'bytes')

        with compressor:
            await asyncio.sleep(3)
        for client in clients:
            client.disconnect()
        browser.close()


def describe(error: ProtocolError) -> str:
    """Return the reason a peer's message was refused."""
    return str(error)


if __name__ == '__main__':
    asyncio.run(main())
