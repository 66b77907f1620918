"""The pylibfreenect2 backend, driven through the stand-in module in test/standin."""
import importlib
import logging
import os
import sys
import threading
import time

from conftest import LOOPBACK, run_async, wait_until
import numpy as np
import pytest
from streamkinect2 import freenect2_device
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.freenect2_device import (depth_to_uint16, Freenect2Kinect,
                                            Freenect2Unavailable, open_devices)
from streamkinect2.server import Server

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'standin')


@pytest.fixture
def lib(monkeypatch):
    """Install the stand-in pylibfreenect2 for one test, with no sensor connected."""
    monkeypatch.syspath_prepend(STANDIN)
    monkeypatch.delenv('STANDIN_FREENECT2', raising=False)
    sys.modules.pop('pylibfreenect2', None)
    module = importlib.import_module('pylibfreenect2')
    module.SCENARIO.reset()
    yield module
    for device in module.SCENARIO.opened:
        if device.started:
            device.stop()
    sys.modules.pop('pylibfreenect2', None)


def depth_frames(count=4):
    """Float32 millimetre frames with every edge case, different from frame to frame."""
    edges = np.array([np.nan, np.inf, -np.inf, -5.0, 0.0, 0.4, 0.6, 300.0, 499.5, 500.0,
                      1234.5, 1235.5, 4500.0, 4500.4, 4500.6, 8000.0, 65535.0, 70000.0,
                      1e30], np.float32)
    base = np.resize(edges, (424, 512))
    return [np.roll(base, k, axis=1) for k in range(count)]


def test_conversion_at_the_edges():
    values = np.array([[np.nan, np.inf, -np.inf, -1.0, 0.0, 0.4, 0.5, 0.6, 300.0, 4500.0,
                        8000.0, 65535.0, 65535.4, 65536.0, 70000.0, 1234.5, 1235.5]],
                      np.float32)
    # The whole uint16 range allowed: only what cannot be a reading becomes 0.
    assert depth_to_uint16(values, 0, 65535).tolist() == [[
        0, 0, 0, 0, 0, 0, 0, 1, 300, 4500, 8000, 65535, 0, 0, 0, 1234, 1236]]
    # libfreenect2's default range, 0.5 to 4.5 m: 0.3 m and 8 m are no reading.
    assert depth_to_uint16(values, 500, 4500).tolist() == [[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 4500, 0, 0, 0, 0, 0, 1234, 1236]]
    out = np.full((1, 17), 7, np.uint16)
    assert depth_to_uint16(values, 500, 4500, out=out) is out and out[0, 0] == 0


def test_a_missing_pylibfreenect2_says_how_to_install_it_or_use_the_mock(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pylibfreenect2', None)
    with pytest.raises(Freenect2Unavailable) as err:
        open_devices()
    for text in ('pylibfreenect2', 'libfreenect2', 'docs/freenect2.md', 'mock'):
        assert text in str(err.value)


def test_serial_selection(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames()), lib.Sensor('B2', depth_frames())])
    assert freenect2_device.list_serials() == ['A1', 'B2']
    assert [d.unique_kinect_id for d in open_devices()] == ['A1', 'B2']
    assert [d.unique_kinect_id for d in open_devices(['B2'])] == ['B2']
    with pytest.raises(Freenect2Unavailable, match='C3 not connected; connected: A1, B2'):
        open_devices(['A1', 'C3'])
    lib.SCENARIO.reset([])
    with pytest.raises(Freenect2Unavailable, match='no Kinect v2 sensor found'):
        open_devices()


def test_pipeline_choice_and_fallback(lib, caplog):
    caplog.set_level(logging.INFO, 'streamkinect2.freenect2_device')
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())], pipelines=['cpu', 'opengl'])
    assert open_devices(pipeline='auto')[0].pipeline_name == 'opengl'
    assert open_devices(pipeline='cpu')[0].pipeline_name == 'cpu'
    caplog.clear()
    device = open_devices(pipeline='cuda')[0]
    assert device.pipeline_name == 'opengl'
    assert lib.SCENARIO.opened[-1].pipeline.name == 'opengl'
    messages = [r.getMessage() for r in caplog.records]
    assert "libfreenect2 pipeline 'cuda' is not available in this build" in messages
    assert "Falling back from pipeline 'cuda' to 'opengl'" in messages
    assert 'Using libfreenect2 opengl pipeline' in messages
    with pytest.raises(ValueError, match='unknown pipeline'):
        open_devices(pipeline='vulkan')


def _collect(device, count, timeout=10.0):
    frames, done = [], threading.Event()

    def on_frame(sender, depth_frame):
        frames.append(depth_frame)
        if len(frames) >= count:
            done.set()
    Freenect2Kinect.on_depth_frame.connect(on_frame, device)
    return frames, done, on_frame


def test_frames_carry_the_sensor_clock_and_convert_exactly(lib):
    sources = depth_frames()
    lib.SCENARIO.reset([lib.Sensor('A1', sources, fps=60)])
    device = open_devices(min_depth=500, max_depth=4500)[0]
    frames, done, handler = _collect(device, 6)
    with device:
        assert done.wait(10)
        assert device.depth_camera['fx'] == pytest.approx(366.1)
        assert device.depth_camera['p2'] == pytest.approx(-0.0007)
    Freenect2Kinect.on_depth_frame.disconnect(handler, device)
    calls = lib.SCENARIO.sensors[0].calls
    assert calls[:2] == ['setIrAndDepthFrameListener', 'startStreams(False, True)']
    assert calls[-2:] == ['stop', 'close']
    for frame in frames:
        index = frame.sequence - 1000
        assert frame.device_timestamp == index * 333
        assert frame.array.dtype == np.uint16 and frame.shape == (512, 424)
        expected = depth_to_uint16(sources[index % len(sources)], 500, 4500)
        assert np.array_equal(frame.array, expected)
        assert abs(time.time() - frame.timestamp) < 10


def test_unplugged_mid_stream_is_reported_and_the_thread_ends(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=100, unplug_after=5)])
    device = open_devices(frame_timeout=0.3)[0]
    lost = threading.Event()
    Freenect2Kinect.on_device_lost.connect(lambda sender: lost.set(), device, weak=False)
    frames, _, handler = _collect(device, 5)
    device.start()
    assert lost.wait(5)
    assert len(frames) == 5 and device.lost
    device._thread.join(2)
    assert not device._thread.is_alive()
    device.stop()
    assert lib.SCENARIO.sensors[0].calls[-1] == 'close'
    with pytest.raises(Freenect2Unavailable, match='lost'):
        device.start()
    Freenect2Kinect.on_depth_frame.disconnect(handler, device)


def test_repeated_start_and_stop_only_warn(lib, caplog):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())])
    device = open_devices()[0]
    device.stop()
    with device:
        device.start()
        assert device.is_running
    assert not device.is_running
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert 'Kinect A1 not running' in warnings and 'Kinect A1 already running' in warnings


def test_served_end_to_end_with_the_sensor_intrinsics(lib):
    sources = depth_frames()
    lib.SCENARIO.reset([lib.Sensor('S3R14L', sources, fps=30)])

    async def main():
        device = open_devices(min_depth=0, max_depth=65535)[0]
        received = []
        with device, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(device)
            with Client(server.endpoints[EndpointType.control]) as client:
                Client.on_add_kinect.connect(
                    lambda c, kinect_id: c.enable_depth_frames(kinect_id), client,
                    weak=False)
                Client.on_depth_frame.connect(
                    lambda c, depth_frame, kinect_id: received.append(depth_frame), client,
                    weak=False)
                await wait_until(lambda: len(received) >= 5, 15, 'frames')
                record = client.device_info('S3R14L')
        assert record['depth_camera'] == device.depth_camera
        assert record['depth_camera']['cx'] == pytest.approx(258.3)
        for frame in received:
            source = sources[(frame.sequence - 1000) % len(sources)]
            assert np.array_equal(frame.array, depth_to_uint16(source, 0, 65535))
    run_async(main())


# --- through the ROS 2 nodes ----------------------------------------------------------

VALUES = [float('nan'), 0.0, 300.0, 1234.4, 4500.0, 4600.0, 8000.0, 2000.6]
IR = {'fx': 367.25, 'fy': 367.5, 'cx': 259.75, 'cy': 206.5, 'k1': 0.0875, 'k2': -0.25,
      'k3': 0.0875, 'p1': 0.0015, 'p2': -0.0005}


def test_server_node_with_a_sensor_to_client_node_image_and_intrinsics(monkeypatch):
    ros_helpers = pytest.importorskip('ros_helpers')
    pytest.importorskip('rclpy')
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    import json

    scenario = {'pipelines': ['cpu'], 'sensors': [
        {'serial': '007357', 'fps': 30, 'values': VALUES, 'ir_params': IR},
        {'serial': '008400', 'fps': 30, 'values': VALUES, 'unplug_after': 60}]}
    monkeypatch.setenv('STANDIN_FREENECT2', json.dumps(scenario))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        p for p in (STANDIN, os.environ.get('PYTHONPATH')) if p))
    base = np.resize(np.array(VALUES, np.float32), (424, 512))
    expected = [depth_to_uint16(np.roll(base, k, axis=1), 500, 4500).tobytes()
                for k in range(8)]
    port = ros_helpers.free_port()
    namespace = '/' + ros_helpers.unique('hw')
    server_params = {'address': LOOPBACK, 'announce': 'false', 'control_port': port,
                     'device': 'freenect2', 'freenect2_pipeline': 'opengl',
                     'diagnostics_period': 0.0}
    with ros_helpers.NodeProcess('server_node', server_params) as server, \
            ros_helpers.NodeProcess('client_node', {
                'server_endpoint': 'tcp://{0}:{1}'.format(LOOPBACK, port),
                'response_timeout': 1.0, 'reconnect_period': 0.5},
                namespace=namespace) as client, \
            ros_helpers.TestSubscriber() as sub:
        images, infos = [], []
        topic = '{0}/kinect2_007357/depth/'.format(namespace)
        sub.node.create_subscription(Image, topic + 'image_raw', images.append,
                                     qos_profile_sensor_data)
        sub.node.create_subscription(CameraInfo, topic + 'camera_info', infos.append,
                                     qos_profile_sensor_data)
        sub.spin_until(lambda: len(images) >= 5 and infos, 30.0, 'Images from the sensor')
        for image in images:
            assert (image.encoding, image.width, image.height) == ('16UC1', 512, 424)
            assert bytes(image.data) in expected
        info = infos[-1]
        assert info.distortion_model == 'plumb_bob'
        assert list(info.k) == pytest.approx([IR['fx'], 0, IR['cx'], 0, IR['fy'], IR['cy'],
                                              0, 0, 1])
        assert list(info.d) == pytest.approx([IR['k1'], IR['k2'], IR['p1'], IR['p2'],
                                              IR['k3']])
        # The pipeline asked for is not in this build: the fallback is logged.
        server.wait_for_output("Falling back from pipeline 'opengl' to 'cpu'", 5.0)
        # The second sensor goes silent after 2 s: reported, removed, the first serves on.
        server.wait_for_output('Sensor 008400 lost (unplugged?): removed; still serving: '
                               '007357', 15.0)
        client.wait_for_output('Device 008400 was removed from the server', 5.0)
        count = len(images)
        sub.spin_until(lambda: len(images) > count + 10, 10.0, 'Images after the unplug')
        assert server.stop() == 0, server.output()
