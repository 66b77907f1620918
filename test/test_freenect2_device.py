"""The pylibfreenect2 backend, driven through the stand-in module in test/standin.

The stand-in (test/standin/pylibfreenect2) plays the sensor: frames arriving, a sensor
that cannot be opened or started, an unplug, a pipeline that delivers nothing. Where the
real binding itself can answer (types, the failed open, the camera parameters), the
tests are in test_freenect2_real.py; the stand-in's own fidelity in
test_freenect2_standin.py.
"""
import gc
import json
import logging
import os
import sys
import threading
import time

from conftest import LOOPBACK, run_async, STANDIN, wait_until
import numpy as np
import pytest
from streamkinect2 import freenect2_device
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.device import ColorFrame, IrFrame
from streamkinect2.freenect2_device import (depth_to_uint16, Freenect2Kinect,
                                            Freenect2Unavailable, ir_to_uint16, open_devices)
from streamkinect2.server import Server
from streamkinect2_ros import backends

LOGGER = 'streamkinect2.freenect2_device'


def script(monkeypatch, lib, **spec):
    """Script the stand-in through STANDIN_FREENECT2, for this process and its children."""
    monkeypatch.setenv('STANDIN_FREENECT2', json.dumps(spec))
    lib._scenario_from_env()


def depth_frames(count=4):
    """Float32 millimetre frames with every edge case, different from frame to frame."""
    edges = np.array([np.nan, np.inf, -np.inf, -5.0, 0.0, 0.4, 0.6, 300.0, 499.5, 500.0,
                      1234.5, 1235.5, 4500.0, 4500.4, 4500.6, 8000.0, 65535.0, 70000.0,
                      1e30], np.float32)
    base = np.resize(edges, (424, 512))
    return [np.roll(base, k, axis=1) for k in range(count)]


def messages(caplog, level=logging.DEBUG):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


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
    devices = open_devices()
    assert [d.unique_kinect_id for d in devices] == ['A1', 'B2']
    for device in devices:
        device.close()
    assert [d.unique_kinect_id for d in open_devices(['B2'])] == ['B2']
    with pytest.raises(Freenect2Unavailable, match='C3 not connected; connected: A1, B2'):
        open_devices(['A1', 'C3'])
    lib.SCENARIO.reset([])
    with pytest.raises(Freenect2Unavailable, match='no Kinect v2 sensor found'):
        open_devices()


# --- defect 2: a listed sensor that cannot be opened ---------------------------------

def test_a_sensor_that_cannot_be_opened_is_reported_and_the_others_served(lib, caplog):
    """libfreenect2 returns NULL; the first call on it would segfault (WouldCrash here)."""
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), open_fails=True),
                        lib.Sensor('B2', depth_frames())])
    devices = open_devices()
    assert [d.unique_kinect_id for d in devices] == ['B2']
    errors = messages(caplog, logging.ERROR)
    assert any(m.startswith('could not open sensor A1: ') for m in errors), errors
    for cause in ('in use by another', 'udev rules', 'USB 3'):
        assert cause in errors[0]
    frames, done, handler = _collect(devices[0], 3)
    with devices[0]:
        assert done.wait(10)
    Freenect2Kinect.on_depth_frame.disconnect(handler, devices[0])


def test_a_sensor_open_in_another_process_is_not_opened_twice(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())])
    first = open_devices()[0]  # its own Freenect2 context, as another process would have
    with pytest.raises(Freenect2Unavailable, match='could not open sensor A1: '):
        open_devices()
    first.close()
    assert [d.unique_kinect_id for d in open_devices()] == ['A1']


def test_no_sensor_opens_the_error_names_each_cause(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), open_fails=True),
                        lib.Sensor('B2', depth_frames(), open_fails=True)])
    with pytest.raises(Freenect2Unavailable) as err:
        open_devices()
    assert 'could not open sensor A1: ' in str(err.value)
    assert 'could not open sensor B2: ' in str(err.value)
    with pytest.raises(backends.BackendError, match='could not open sensor A1: .*USB 3'):
        backends.create_devices('freenect2', {'freenect2_serials': ['A1']})


# --- defect 3: pipelines ----------------------------------------------------------------

def test_a_pipeline_not_in_this_build_falls_back(lib, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())], pipelines=['cpu', 'opencl'])
    device = open_devices(pipeline='cpu')[0]
    assert device.pipeline_name == 'cpu'
    device.close()
    caplog.clear()
    device = open_devices(pipeline='cuda')[0]
    assert device.pipeline_name == 'opencl'
    assert lib.SCENARIO.opened[-1].pipeline.name == 'opencl'
    assert "libfreenect2 pipeline 'cuda' is not available in this build" in messages(caplog)
    assert "Falling back from pipeline 'cuda' to 'opencl'" in messages(caplog)
    with pytest.raises(ValueError, match='unknown pipeline'):
        open_devices(pipeline='vulkan')


def test_opengl_is_never_built_without_a_display(lib, caplog):
    """libfreenect2 calls exit(-1) when GLFW finds no display (SystemExit(255) here)."""
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())], pipelines=['cpu', 'opengl'])
    for asked in ('auto', 'opengl'):
        device = open_devices(pipeline=asked)[0]
        assert device.pipeline_name == 'cpu'
        device.close()
    warnings = messages(caplog, logging.WARNING)
    assert any("pipeline 'opengl' needs a display" in m and 'DISPLAY' in m
               for m in warnings), warnings
    assert not [d for d in lib.SCENARIO.opened if d.pipeline.name == 'opengl']


def test_opengl_with_a_display_is_tried_in_a_child_process_first(lib, monkeypatch, caplog):
    """A display without a usable OpenGL 3.1 also makes libfreenect2 exit the process."""
    monkeypatch.setenv('DISPLAY', ':0')
    sensor = {'serial': 'A1', 'values': [1000.0]}
    script(monkeypatch, lib, pipelines=['cpu', 'opengl'], gl_window=False, sensors=[sensor])
    device = open_devices(pipeline='auto')[0]
    assert device.pipeline_name == 'cpu'
    device.close()
    warnings = messages(caplog, logging.WARNING)
    assert any("pipeline 'opengl' is not usable" in m and 'Failed to create opengl window'
               in m for m in warnings), warnings
    script(monkeypatch, lib, pipelines=['cpu', 'opengl'], gl_window=True, sensors=[sensor])
    assert open_devices(pipeline='auto')[0].pipeline_name == 'opengl'


def _collect(device, count):
    frames, done = [], threading.Event()

    def on_frame(sender, depth_frame):
        frames.append(depth_frame)
        if len(frames) >= count:
            done.set()
    Freenect2Kinect.on_depth_frame.connect(on_frame, device)
    return frames, done, on_frame


def test_no_frame_within_the_start_timeout_reopens_with_the_next_pipeline(lib, caplog):
    """CUDA and OpenCL pipelines build without error but may process nothing."""
    caplog.set_level(logging.INFO, LOGGER)
    sources = depth_frames()
    lib.SCENARIO.reset([lib.Sensor('A1', sources, fps=60)], pipelines=['cpu', 'cuda', 'opencl'],
                       unusable=['cuda', 'opencl'])
    device = open_devices(start_timeout=0.3)[0]
    assert device.pipeline_name == 'cuda'
    frames, done, handler = _collect(device, 3)
    with device:
        assert done.wait(10)
        assert device.pipeline_name == 'cpu'
    Freenect2Kinect.on_depth_frame.disconnect(handler, device)
    # A fresh pipeline object each time (libfreenect2 owns, and deletes, the one it got):
    # the stand-in raises WouldCrash on a reused one.
    assert [d.pipeline.name for d in lib.SCENARIO.opened] == ['cuda', 'opencl', 'cpu']
    assert [d.state for d in lib.SCENARIO.opened] == ['Closed', 'Closed', 'Open']
    log = messages(caplog)
    assert ('Kinect A1: no depth frame within 0.3 s of start with the cuda pipeline; '
            'reopening with the opencl pipeline') in log
    assert ('Kinect A1: no depth frame within 0.3 s of start with the opencl pipeline; '
            'reopening with the cpu pipeline') in log
    assert 'Kinect A1 streaming depth with the cpu pipeline' in log
    for frame in frames:
        # Un-mirrored: test_frames_come_un_mirrored_as_kinect2_bridge_publishes_them.
        expected = depth_to_uint16(sources[(frame.sequence - 1000) % len(sources)][:, ::-1])
        assert np.array_equal(frame.array, expected)


def test_no_frame_with_any_pipeline_is_reported_lost_with_the_cause(lib, caplog):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=60)], pipelines=['cpu', 'cuda'],
                       unusable=['cuda', 'cpu'])
    device = open_devices(start_timeout=0.2)[0]
    lost = threading.Event()
    Freenect2Kinect.on_device_lost.connect(lambda sender: lost.set(), device, weak=False)
    device.start()
    assert lost.wait(10)
    device.stop()
    error = [m for m in messages(caplog, logging.ERROR) if m.startswith('Kinect A1 lost')]
    assert error and 'no depth frame within 0.2 s of start with any pipeline (cuda, cpu)' \
        in error[0] and 'USB 3' in error[0], error
    assert lib.SCENARIO.opened[-1].state == 'Closed'


# --- defect 4: stop() stops, close() closes --------------------------------------------

def test_start_after_stop_streams_again(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=60)])
    device = open_devices(frame_timeout=5.0)[0]
    frames, done, handler = _collect(device, 3)
    with device:
        assert done.wait(10)
    calls = lib.SCENARIO.sensors[0].calls
    assert calls[-1] == 'stop' and 'close' not in calls
    first_run = len(frames)
    done.clear()
    frames.clear()
    with device:
        assert done.wait(10), 'no frame after a restart'
    assert frames[0].sequence >= 1000 + first_run
    device.close()
    assert calls[-1] == 'close' and lib.SCENARIO.opened[0].state == 'Closed'
    with pytest.raises(Freenect2Unavailable, match='Kinect A1 is closed'):
        device.start()
    device.close()  # twice: nothing more
    Freenect2Kinect.on_depth_frame.disconnect(handler, device)


def test_a_device_made_directly_keeps_its_context_alive(lib):
    """libfreenect2 deletes its devices with the context: the device itself must hold it.

    Made without open_devices, from a context the caller keeps no reference to.
    """
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=60)])
    device = Freenect2Kinect(lib.Freenect2(), 'A1', pipeline=['cpu'], frame_timeout=5.0,
                             lib=lib)
    gc.collect()
    assert lib.SCENARIO.opened[0].state == 'Open'
    frames, done, handler = _collect(device, 2)
    try:
        with device:
            assert done.wait(10), 'no frame from a device made directly'
    finally:
        Freenect2Kinect.on_depth_frame.disconnect(handler, device)
    assert not device.lost
    device.close()
    assert lib.SCENARIO.opened[0].state == 'Closed'


def test_repeated_start_and_stop_only_warn(lib, caplog):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())])
    device = open_devices()[0]
    device.stop()
    with device:
        device.start()
        assert device.is_running
    assert not device.is_running
    warnings = messages(caplog, logging.WARNING)
    assert 'Kinect A1 not running' in warnings and 'Kinect A1 already running' in warnings


# --- defect 5: a sensor whose streams do not start -------------------------------------

def test_a_sensor_that_does_not_start_is_reported_not_served_with_empty_intrinsics(lib):
    """pylibfreenect2 drops startStreams' bool: the unread camera parameters tell."""
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), start_fails=True)])
    device = open_devices()[0]
    with pytest.raises(Freenect2Unavailable) as err:
        device.start()
    assert str(err.value).startswith('could not start sensor A1: ')
    assert 'fx = 0' in str(err.value) and 'USB 3' in str(err.value)
    assert not device.is_running and device.depth_camera is None
    device.close()


# --- the sensor clock (defect 6), conversion, intrinsics ------------------------------

def test_frames_carry_the_sensor_clock_and_convert_exactly(lib):
    """A sensor opened for depth alone streams as before IR and colour were added."""
    sources = depth_frames()
    lib.SCENARIO.reset([lib.Sensor('A1', sources, fps=30)])
    device = open_devices(min_depth=500, max_depth=4500, streams=['depth'])[0]
    assert device.streams == ('depth',)
    frames, done, handler = _collect(device, 6)
    with device:
        assert done.wait(10)
        assert device.depth_camera['fx'] == pytest.approx(366.1)
        # The record describes the un-mirrored frames: libfreenect2's p2 (-0.0007) negated.
        assert device.depth_camera['p2'] == pytest.approx(0.0007)
    Freenect2Kinect.on_depth_frame.disconnect(handler, device)
    calls = lib.SCENARIO.sensors[0].calls
    assert calls[:2] == ['setIrAndDepthFrameListener', 'startStreams(False, True)']
    assert lib.SCENARIO.opened[0].listener._subscribed == lib.FrameType.Depth
    assert device.color_camera is None
    # libfreenect2's clock: 0.125 ms a tick, 266 ticks a frame at 30 Hz.
    tick_ns = freenect2_device.DEVICE_TICK_NS
    assert tick_ns == 125000
    for frame in frames:
        index = frame.sequence - 1000
        assert frame.device_timestamp == index * 266
        assert frame.array.dtype == np.uint16 and frame.shape == (512, 424)
        expected = depth_to_uint16(sources[index % len(sources)][:, ::-1], 500, 4500)
        assert np.array_equal(frame.array, expected)
        assert abs(time.time() - frame.timestamp) < 10
    step = frames[1].device_timestamp - frames[0].device_timestamp
    period_ns = step * tick_ns // (frames[1].sequence - frames[0].sequence)
    assert period_ns == 33250000  # 30 Hz


def test_unplugged_mid_stream_is_reported_closed_and_the_thread_ends(lib):
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
    # A lost sensor is closed by the device itself (the node only stops it).
    assert lib.SCENARIO.sensors[0].calls[-1] == 'close'
    device.stop()
    with pytest.raises(Freenect2Unavailable, match='lost'):
        device.start()
    Freenect2Kinect.on_depth_frame.disconnect(handler, device)


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
        device.close()
        assert record['depth_camera'] == device.depth_camera
        # IrCameraParams are C floats: what the client gets is the float32 value, taken
        # over to the un-mirrored frames (511 - cx).
        assert record['depth_camera']['cx'] == 511 - float(np.float32(258.3))
        for frame in received:
            source = sources[(frame.sequence - 1000) % len(sources)]
            assert np.array_equal(frame.array, depth_to_uint16(source[:, ::-1], 0, 65535))
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

    scenario = {'pipelines': ['cpu'], 'sensors': [
        {'serial': '007357', 'fps': 30, 'values': VALUES, 'ir_params': IR},
        {'serial': '008400', 'fps': 30, 'values': VALUES, 'unplug_after': 60},
        {'serial': '009911', 'fps': 30, 'values': VALUES, 'open_fails': True}]}
    monkeypatch.setenv('STANDIN_FREENECT2', json.dumps(scenario))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        p for p in (STANDIN, os.environ.get('PYTHONPATH')) if p))
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    base = np.resize(np.array(VALUES, np.float32), (424, 512))
    expected = [depth_to_uint16(np.roll(base, k, axis=1)[:, ::-1], 500, 4500).tobytes()
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
        # The CameraInfo matches the un-mirrored pixels: libfreenect2's cx and p2 mirrored.
        assert list(info.k) == pytest.approx([IR['fx'], 0, 511 - IR['cx'], 0, IR['fy'],
                                              IR['cy'], 0, 0, 1])
        assert list(info.d) == pytest.approx([IR['k1'], IR['k2'], IR['p1'], -IR['p2'],
                                              IR['k3']])
        # The pipeline asked for is not in this build: the fallback is logged.
        server.wait_for_output("Falling back from pipeline 'opengl' to 'cpu'", 5.0)
        # The sensor that cannot be opened is named, with the likely causes, at start-up.
        server.wait_for_output('could not open sensor 009911: libfreenect2 returned no '
                               'device', 5.0)
        # The second sensor goes silent after 2 s: reported, removed, the first serves on.
        server.wait_for_output('Sensor 008400 lost (unplugged?): removed; still serving: '
                               '007357', 15.0)
        client.wait_for_output('Device 008400 was removed from the server', 5.0)
        count = len(images)
        sub.spin_until(lambda: len(images) > count + 10, 10.0, 'Images after the unplug')
        assert server.stop() == 0, server.output()


# --- IR and colour ----------------------------------------------------------------------

def test_ir_conversion_at_the_edges():
    """libfreenect2 IR is float32 0-65535: rounded (halves to even), clipped, NaN 0."""
    values = np.array([[np.nan, np.inf, -np.inf, -3.0, -0.4, 0.0, 0.4, 0.5, 0.6, 1.5, 2.5,
                        1234.5, 65534.6, 65535.0, 65535.4, 65535.6, 70000.0, 1e30]],
                      np.float32)
    assert ir_to_uint16(values).tolist() == [[
        0, 65535, 0, 0, 0, 0, 0, 0, 1, 2, 2, 1234, 65535, 65535, 65535, 65535, 65535,
        65535]]
    out = np.full((1, 18), 7, np.uint16)
    assert ir_to_uint16(values, out=out) is out and out[0, 0] == 0


def ir_frames(count=4):
    """Float32 IR amplitude frames with the edge cases, different from frame to frame."""
    edges = np.array([np.nan, -1.0, 0.0, 0.5, 1.5, 17.25, 300.5, 301.5, 65535.0, 65535.7,
                      9e9], np.float32)
    base = np.resize(edges, (424, 512))
    return [np.roll(base, 3 * k + 1, axis=1) for k in range(count)]


def color_frames(count=2):
    """BGRX frames whose channels all differ, different from frame to frame."""
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (1080, 1920, 4), dtype=np.uint8) for _ in range(count)]


class Collector(object):
    """Collect a device's depth, IR and colour frames and lost streams."""

    def __init__(self, device):
        self.device = device
        self.depth, self.ir, self.color, self.lost_streams = [], [], [], []
        self.changed = threading.Condition()
        self._handlers = [
            (Freenect2Kinect.on_depth_frame, lambda sender, depth_frame: self._add(
                self.depth, depth_frame)),
            (Freenect2Kinect.on_ir_frame, lambda sender, ir_frame: self._add(
                self.ir, ir_frame)),
            (Freenect2Kinect.on_color_frame, lambda sender, color_frame: self._add(
                self.color, color_frame)),
            (Freenect2Kinect.on_stream_lost, lambda sender, stream: self._add(
                self.lost_streams, stream))]
        for signal, handler in self._handlers:
            signal.connect(handler, device)

    def _add(self, frames, frame):
        with self.changed:
            frames.append(frame)
            self.changed.notify_all()

    def wait(self, predicate, timeout=15.0):
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), 'timed out'

    def close(self):
        for signal, handler in self._handlers:
            signal.disconnect(handler, self.device)


def test_ir_comes_with_the_depth_of_its_capture_and_converts_exactly(lib):
    depth_sources, ir_sources = depth_frames(), ir_frames()
    lib.SCENARIO.reset([lib.Sensor('A1', depth_sources, fps=30, ir_frames=ir_sources)])
    device = open_devices(streams=['depth', 'ir'])[0]
    assert device.streams == ('depth', 'ir')
    frames = Collector(device)
    try:
        with device:
            frames.wait(lambda: len(frames.ir) >= 5)
    finally:
        frames.close()
    assert lib.SCENARIO.opened[0].listener._subscribed == lib.FrameType.Ir | lib.FrameType.Depth
    assert 'setColorFrameListener' not in lib.SCENARIO.sensors[0].calls
    assert not frames.color and device.color_camera is None
    depth_by_sequence = {f.sequence: f for f in frames.depth}
    for ir in frames.ir:
        assert type(ir) is IrFrame and ir.shape == (512, 424)
        index = ir.sequence - 1000
        assert np.array_equal(ir.array,
                              ir_to_uint16(ir_sources[index % len(ir_sources)][:, ::-1]))
        depth = depth_by_sequence[ir.sequence]
        assert (ir.timestamp_ns, ir.device_timestamp) == (depth.timestamp_ns,
                                                          depth.device_timestamp)
        assert ir.device_timestamp == index * 266


@pytest.mark.parametrize('decoder', ['bgrx', 'rgbx'])
def test_colour_frames_are_bgrx_with_their_own_stamps(lib, monkeypatch, decoder):
    """Colour is BGRX: TurboJPEG gives it, Tegra gives RGBX (Frame::format).

    pylibfreenect2 does not wrap ``Frame::format``; the backend reads it from the C++
    frame (test_freenect2_real.py checks that against the real binding). The stand-in's
    frames are Python objects, so here the reader is pointed at the stand-in's field.
    """
    monkeypatch.setattr(freenect2_device, 'frame_format', lambda frame: frame._c().format)
    sources = color_frames()
    fmt = lib.FORMAT_RGBX if decoder == 'rgbx' else lib.FORMAT_BGRX
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=30, color_frames=sources,
                                   color_format=fmt, first_sequence=500)])
    device = open_devices()[0]
    assert device.streams == ('depth', 'ir', 'color')
    assert device.device_tick_ns == 125000
    frames = Collector(device)
    try:
        with device:
            frames.wait(lambda: len(frames.color) >= 3)
            assert device.color_camera['fx'] == pytest.approx(1081.37)
    finally:
        frames.close()
    assert lib.SCENARIO.sensors[0].calls[:3] == [
        'setIrAndDepthFrameListener', 'setColorFrameListener', 'startStreams(True, True)']
    assert lib.SCENARIO.opened[0].color_listener._subscribed == lib.FrameType.Color
    sequences = [f.sequence for f in frames.color]
    assert sequences == list(range(500, 500 + len(sequences)))
    for frame in frames.color:
        assert type(frame) is ColorFrame and not frame.paired
        assert frame.pixels.shape == (1080, 1920, 4) and frame.pixels.dtype == np.uint8
        assert frame.shape == (1920, 1080) and frame.jpeg is None
        source = sources[(frame.sequence - 500) % len(sources)]
        # B, G, R, X whatever the decoder; un-mirrored
        assert np.array_equal(frame.pixels, source[:, ::-1])
        assert np.array_equal(frame.array, source[:, ::-1, :3])
        assert abs(time.time() - frame.timestamp) < 10
    # Device time on the clock of depth, in the same 0.125 ms ticks.
    last_depth = max(f.device_timestamp for f in frames.depth)
    assert 0 < frames.color[-1].device_timestamp <= last_depth + 266


@pytest.mark.parametrize('decoder', ['bgrx', 'rgbx'])
def test_frames_come_un_mirrored_as_kinect2_bridge_publishes_them(lib, monkeypatch, decoder):
    """libfreenect2's frames are mirrored; depth, IR and colour come flipped horizontally.

    kinect2_bridge flips them (``cv::flip(..., 1)``), and the wire frames, the mock and
    the recorded captures are in its orientation: a point at libfreenect2's column x is
    at column ``width - 1 - x`` of the frames the device emits.
    """
    monkeypatch.setattr(freenect2_device, 'frame_format', lambda frame: frame._c().format)
    depth = np.full((424, 512), 1000.0, np.float32)
    depth[10, 0], depth[11, 511] = 2000.0, 3000.0
    ir = np.full((424, 512), 100.0, np.float32)
    ir[20, 1] = 500.0
    bgrx = np.zeros((1080, 1920, 4), np.uint8)
    bgrx[30, 2] = (1, 2, 3, 4)
    fmt = lib.FORMAT_RGBX if decoder == 'rgbx' else lib.FORMAT_BGRX
    lib.SCENARIO.reset([lib.Sensor('A1', [depth], fps=30, ir_frames=[ir],
                                   color_frames=[bgrx], color_format=fmt)])
    device = open_devices(min_depth=500, max_depth=4500)[0]
    frames = Collector(device)
    try:
        with device:
            frames.wait(lambda: len(frames.color) >= 2 and len(frames.ir) >= 2)
    finally:
        frames.close()
    device.close()
    for frame in frames.depth:
        assert (frame.array[10, 511], frame.array[11, 0], frame.array[10, 0]) == (
            2000, 3000, 1000)
        assert np.array_equal(frame.array, depth_to_uint16(depth[:, ::-1]))
        assert frame.array.flags.c_contiguous
    for frame in frames.ir:
        assert frame.array[20, 510] == 500 and frame.array[20, 1] == 100
        assert np.array_equal(frame.array, ir_to_uint16(ir[:, ::-1]))
        assert frame.array.flags.c_contiguous
    for frame in frames.color:
        assert frame.pixels[30, 1917].tolist() == [1, 2, 3, 4]
        assert np.array_equal(frame.pixels, bgrx[:, ::-1])
        assert frame.pixels.flags.c_contiguous


def test_the_colour_camera_record(lib):
    params = dict(lib.DEFAULT_COLOR_PARAMS, fx=1060.5, fy=1061.25, cx=955.75, cy=540.5,
                  shift_m=52.5, my_x0y0=0.015625)
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), color_params=params)])
    device = open_devices()[0]
    with device:
        camera = device.color_camera
    assert (camera['width'], camera['height']) == (1920, 1080)
    # Intrinsics of the un-mirrored frames (cx to 1919 - cx); mapping terms as read.
    assert [camera[k] for k in ('fx', 'fy', 'cx', 'cy')] == [1060.5, 1061.25, 963.25, 540.5]
    assert [camera[k] for k in ('k1', 'k2', 'k3', 'p1', 'p2')] == [0.0] * 5
    assert camera['shift_m'] == 52.5 and camera['my_x0y0'] == 0.015625
    assert set(camera) == {'width', 'height', 'fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3',
                           'p1', 'p2'} | set(freenect2_device.COLOR_MAPPING_KEYS)
    assert camera['mx_x1y0'] == float(np.float32(params['mx_x1y0']))  # C floats
    device.close()


def test_unread_colour_parameters_fail_the_start(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), color_params=dict(
        lib.DEFAULT_COLOR_PARAMS, fx=0.0))])
    device = open_devices()[0]
    with pytest.raises(Freenect2Unavailable, match='could not start sensor A1: its colour '
                       'camera parameters read back empty'):
        device.start()
    assert not device.is_running and lib.SCENARIO.sensors[0].calls[-1] == 'stop'
    device.close()
    # Without colour the colour parameters are not needed.
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), color_params=dict(
        lib.DEFAULT_COLOR_PARAMS, fx=0.0))])
    device = open_devices(streams=['depth', 'ir'])[0]
    with device:
        assert device.is_running
    device.close()


def test_depth_is_not_throttled_by_slow_colour(lib):
    """Colour at 5 fps (low light is 15) while depth comes at 30: depth keeps its rate.

    One SyncMultiFrameListener for all three types would hand out a map only when colour
    came too: depth at the colour rate (test_freenect2_standin.py shows the listener
    doing so).
    """
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=30, color_fps=5)])
    device = open_devices(frame_timeout=5.0)[0]
    frames = Collector(device)
    try:
        with device:
            frames.wait(lambda: len(frames.color) >= 4)
            depth_count, color_count = len(frames.depth), len(frames.color)
    finally:
        frames.close()
    # Between colour frames 6 depth captures come; one map per colour frame would be 1.
    assert depth_count >= 3 * color_count, (depth_count, color_count)
    assert len(frames.ir) >= len(frames.depth) - 1
    assert not frames.lost_streams


def test_a_lost_colour_stream_is_reported_and_depth_goes_on(lib, caplog):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=30, color_stops_after=3)])
    device = open_devices(frame_timeout=0.5)[0]
    frames = Collector(device)
    try:
        with device:
            frames.wait(lambda: frames.lost_streams)
            count = len(frames.depth)
            frames.wait(lambda: len(frames.depth) >= count + 10)
            assert device.is_running and not device.lost
    finally:
        frames.close()
    assert frames.lost_streams == ['color'] and len(frames.color) == 3
    errors = [m for m in messages(caplog, logging.ERROR) if 'no colour frame' in m]
    assert len(errors) == 1 and errors[0].startswith(
        'Kinect A1: no colour frame for 0.') and 'depth goes on' in errors[0], errors
    device.close()


def test_a_colour_stream_that_never_starts_is_reported(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames(), fps=30, color_stops_after=0)])
    device = open_devices(frame_timeout=0.2, start_timeout=0.5)[0]
    frames = Collector(device)
    try:
        with device:
            frames.wait(lambda: frames.lost_streams)
            assert device.is_running and frames.depth
    finally:
        frames.close()
    assert frames.lost_streams == ['color'] and not frames.color
    device.close()


def test_streams_to_offer(lib):
    lib.SCENARIO.reset([lib.Sensor('A1', depth_frames())])
    with pytest.raises(ValueError, match='unknown stream'):
        open_devices(streams=['depth', 'rgb'])
    assert not lib.SCENARIO.opened  # refused before any sensor was touched
    device = open_devices(streams=['color'])[0]  # depth is always offered
    assert device.streams == ('depth', 'color')
    device.close()
    for option, expected in (([], ('depth', 'ir', 'color')), ([''], ('depth', 'ir', 'color')),
                             (['ir'], ('depth', 'ir'))):
        device = backends.create_devices('freenect2', {'freenect2_streams': option})[0]
        assert device.streams == expected
        device.close()
    with pytest.raises(backends.BackendError, match='unknown stream'):
        backends.create_devices('freenect2', {'freenect2_streams': ['colour']})
