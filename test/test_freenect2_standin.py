"""The stand-in pylibfreenect2 behaves as the real binding over libfreenect2 does.

Each test pins one behaviour the backend's tests rely on and that needs a sensor, so the
real binding (test_freenect2_real.py) cannot show it here; the source it follows is named
in each docstring (r9y9/pylibfreenect2 ``libfreenect2.pyx``; OpenKinect/libfreenect2
``src/libfreenect2.cpp``, ``src/frame_listener_impl.cpp``).
"""
import threading
import time

import numpy as np
import pytest


def frames_of(value, count=2):
    return [np.full((424, 512), value + k, np.float32) for k in range(count)]


def opened(lib, sensor, listener=None, rgb=False, depth=True):
    """Open *sensor*'s device with a CPU pipeline, set *listener*, start the streams."""
    lib.SCENARIO.reset([sensor])
    context = lib.Freenect2()
    device = context.openDevice(sensor.serial.encode(), pipeline=lib.CpuPacketPipeline())
    if listener is not None:
        device.setIrAndDepthFrameListener(listener)
    device.startStreams(rgb, depth)
    return context, device


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.005)


def test_the_listener_takes_only_its_frame_types(lib):
    """frame_listener_impl.cpp onNewFrame: types not subscribed are refused."""
    sensor = lib.Sensor('A1', frames_of(1000.0), fps=100)
    depth_only = lib.SyncMultiFrameListener(lib.FrameType.Depth)
    context, device = opened(lib, sensor, depth_only)
    frames = depth_only.waitForNewFrame()
    assert frames['depth'].asarray(np.float32)[0, 0] in (1000.0, 1001.0)
    ir = frames['ir']  # not delivered: a NULL frame, not a KeyError
    with pytest.raises(lib.WouldCrash):
        ir.asarray(np.float32)
    depth_only.release(frames)
    device.close()
    # The default listener (colour, IR and depth) never completes a map when colour is
    # not streamed: hasNewFrame stays False however many frames come.
    everything = lib.SyncMultiFrameListener()
    context, device = opened(lib, lib.Sensor('B2', frames_of(5.0), fps=100), everything)
    wait_for(lambda: lib.SCENARIO.sensors[0].delivered >= 5)
    assert not everything.hasNewFrame()
    device.close()


def test_new_frames_are_dropped_until_release(lib):
    """frame_listener_impl.cpp: onNewFrame returns false while current_frame_released_."""
    sensor = lib.Sensor('A1', frames_of(1000.0), fps=100, first_sequence=0)
    listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
    context, device = opened(lib, sensor, listener)
    held = listener.waitForNewFrame()
    held_sequence = held['depth'].sequence
    wait_for(lambda: sensor.delivered >= held_sequence + 4)
    assert not listener.hasNewFrame()  # the frames that came meanwhile were dropped
    # The sensor counts a frame before it reaches the listener: the one counted last may
    # still be on its way, and arrive after the release.
    released_at = sensor.delivered - 1
    listener.release(held)
    frames = listener.waitForNewFrame()
    assert frames['depth'].sequence >= released_at > held_sequence + 2
    listener.release(frames)
    device.close()


def test_a_frame_is_garbage_after_release(lib):
    """release() deletes the frames: the pyx's arrays point into freed memory."""
    listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
    context, device = opened(lib, lib.Sensor('A1', frames_of(1234.0), fps=100), listener)
    frames = listener.waitForNewFrame()
    depth = frames['depth']
    pixels = depth.asarray(np.float32)
    assert pixels[0, 0] in (1234.0, 1235.0)
    listener.release(frames)
    assert pixels[0, 0] not in (1234.0, 1235.0)
    with pytest.raises(lib.WouldCrash):
        depth.sequence
    device.close()


def test_the_sensor_clock_ticks_every_0_125_ms(lib):
    """frame_listener.hpp Frame::timestamp: 0.125 ms, 266 a frame at 30 Hz, 533 at 15."""
    assert lib.Sensor('A1', frames_of(1.0)).timestamp_step == 266
    assert lib.Sensor('A1', frames_of(1.0), fps=15).timestamp_step == 533
    listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
    context, device = opened(lib, lib.Sensor('A1', frames_of(1.0), first_sequence=0),
                             listener)
    for _ in range(2):
        frames = listener.waitForNewFrame()
        depth = frames['depth']
        assert depth.timestamp == 266 * depth.sequence
        listener.release(frames)
    device.close()


def test_frame_attributes_are_read_only(lib):
    frame = lib.Frame(512, 424, 4)
    for name in ('timestamp', 'sequence', 'width', 'height', 'bytes_per_pixel'):
        with pytest.raises(AttributeError):
            setattr(frame, name, 1)


def test_start_streams_on_a_device_not_open_does_nothing_silently(lib):
    """libfreenect2.cpp startStreams: ``if(state_ != Open) return false;`` (bool dropped)."""
    listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
    sensor = lib.Sensor('A1', frames_of(1.0), fps=100)
    context, device = opened(lib, sensor, listener)
    device.stop()
    device.close()
    assert device.startStreams(False, True) is None  # no error, and nothing streams
    assert lib.SCENARIO.opened[0].state == 'Closed'
    assert device.stop() is None and device.close() is None


def test_a_failed_start_leaves_the_camera_parameters_unread(lib):
    listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
    sensor = lib.Sensor('A1', frames_of(1.0), start_fails=True)
    context, device = opened(lib, sensor, listener)
    assert device.getIrCameraParams().fx == 0.0
    assert device.getFirmwareVersion() == b'<unknown>'
    device.close()


def test_a_device_that_cannot_be_opened_is_a_null_device(lib):
    """libfreenect2.cpp openDevice returns NULL; the pyx wraps it unchecked."""
    lib.SCENARIO.reset([lib.Sensor('A1', frames_of(1.0), open_fails=True),
                        lib.Sensor('B2', frames_of(1.0))])
    context = lib.Freenect2()
    for name in (b'A1', b'C3', 2):
        device = context.openDevice(name, pipeline=lib.CpuPacketPipeline())
        with pytest.raises(lib.WouldCrash):
            device.getSerialNumber()
    first = context.openDevice(b'B2', pipeline=lib.CpuPacketPipeline())
    assert first.getSerialNumber() == b'B2'
    # Open in another context (another process): its USB interfaces are claimed.
    other = lib.Freenect2().openDevice(b'B2', pipeline=lib.CpuPacketPipeline())
    with pytest.raises(lib.WouldCrash):
        other.getSerialNumber()
    # A pipeline belongs to libfreenect2 once handed over, even when the open failed.
    pipeline = lib.CpuPacketPipeline()
    context.openDevice(b'C3', pipeline=pipeline)
    with pytest.raises(lib.WouldCrash):
        context.openDevice(b'B2', pipeline=pipeline)
    first.close()


def test_devices_die_with_their_context(lib):
    """libfreenect2 ~Freenect2Impl deletes every device it opened (closing it)."""
    context, device = opened(lib, lib.Sensor('A1', frames_of(1.0), fps=100),
                             lib.SyncMultiFrameListener(lib.FrameType.Depth))
    del context
    assert lib.SCENARIO.opened[0].state == 'Closed'
    with pytest.raises(lib.WouldCrash):
        device.getSerialNumber()


def test_the_wait_timeout_needs_a_cxx11_libfreenect2(lib):
    """frame_listener_impl.cpp: without LIBFREENECT2_THREADING_STDLIB the timeout is ignored."""
    sensor = lib.Sensor('A1', frames_of(1.0), fps=2)  # first frame after 0.5 s
    for cxx11 in (True, False):
        listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
        context, device = opened(lib, sensor, listener)
        lib.SCENARIO.cxx11 = cxx11
        frames = listener.waitForNewFrame(milliseconds=0)
        if cxx11:
            assert frames is None
        else:
            assert frames['depth'].sequence >= 1000  # blocked until the frame came
            listener.release(frames)
        device.close()


def test_opengl_without_a_display_ends_the_process(lib, monkeypatch):
    """opengl_depth_packet_processor.cpp: ``glfwInit() == GL_FALSE`` -> ``exit(-1)``."""
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    lib.SCENARIO.reset(pipelines=['cpu', 'opengl'])
    with pytest.raises(SystemExit) as exit_:
        lib.OpenGLPacketPipeline()
    assert exit_.value.code == 255
    lib.SCENARIO.reset(pipelines=['cpu'])
    assert not hasattr(lib, 'OpenGLPacketPipeline')


def test_the_stream_thread_ends_with_the_device(lib):
    before = set(threading.enumerate())
    context, device = opened(lib, lib.Sensor('A1', frames_of(1.0), fps=100),
                             lib.SyncMultiFrameListener(lib.FrameType.Depth))
    assert set(threading.enumerate()) - before
    device.close()
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


def colour_of(value):
    return np.full((1080, 1920, 4), value, np.uint8)


def test_one_listener_for_every_type_runs_at_the_slowest_stream(lib):
    """frame_listener_impl.cpp: a map is ready when every subscribed type has a frame.

    So colour at 5 fps through a listener that also takes depth hands out depth at 5 fps
    (newer depth frames replace the waiting one); a colour listener of its own does not.
    """
    sensor = lib.Sensor('A1', frames_of(1.0), fps=30, color_fps=5,
                        color_frames=[colour_of(9)], first_sequence=0)
    everything = lib.SyncMultiFrameListener()
    context, device = opened(lib, sensor, everything, rgb=True)
    device.setColorFrameListener(everything)
    sequences = []
    for _ in range(3):
        frames = everything.waitForNewFrame()
        sequences.append(frames['depth'].sequence)
        assert frames['color'].asarray(np.uint8).shape == (1080, 1920, 4)
        everything.release(frames)
    # 6 depth captures a colour frame: the ones in between never reached the caller.
    assert all(b - a >= 3 for a, b in zip(sequences, sequences[1:])), sequences
    device.close()


def test_colour_frames_carry_the_decoder_format(lib):
    """Frame::format: BGRX from TurboJPEG, RGBX (R first) from the Tegra decoder."""
    for fmt, first in ((lib.FORMAT_BGRX, 10), (lib.FORMAT_RGBX, 30)):
        pixels = np.empty((1080, 1920, 4), np.uint8)
        pixels[...] = (10, 20, 30, 255)  # B, G, R, X
        sensor = lib.Sensor('A1', frames_of(1.0), fps=30, color_frames=[pixels],
                            color_format=fmt, first_sequence=0)
        listener = lib.SyncMultiFrameListener(lib.FrameType.Color)
        lib.SCENARIO.reset([sensor])
        context = lib.Freenect2()
        device = context.openDevice(b'A1', pipeline=lib.CpuPacketPipeline())
        device.setColorFrameListener(listener)
        device.startStreams(True, False)  # colour alone
        frames = listener.waitForNewFrame()
        color = frames['color']
        assert color._c().format == fmt and not hasattr(color, 'format')  # not wrapped
        assert (color.width, color.height, color.bytes_per_pixel) == (1920, 1080, 4)
        assert color.asarray().shape == (1080, 1920, 4)  # frame type Color: uint8
        assert color.asarray(np.uint8)[5, 7].tolist() == [first, 20, 40 - first, 255]
        assert color.sequence == 0 and color.timestamp % sensor.timestamp_step == 0
        listener.release(frames)
        assert sensor.delivered == 0  # depth was not started
        device.close()


def test_startstreams_reads_both_cameras_parameters(lib):
    """libfreenect2.cpp startStreams reads the RGB camera parameters, colour on or off."""
    sensor = lib.Sensor('A1', frames_of(1.0))
    context = lib.Freenect2()
    lib.SCENARIO.reset([sensor])
    device = context.openDevice(b'A1', pipeline=lib.CpuPacketPipeline())
    assert device.getColorCameraParams().fx == 0.0
    device.startStreams(False, True)
    params = device.getColorCameraParams()
    assert params.fx == pytest.approx(1081.37) and params.shift_m == 52.0
    assert params.mx_x1y0 == float(np.float32(0.640))
    device.close()
    failed = lib.Sensor('B2', frames_of(1.0), start_fails=True)
    lib.SCENARIO.reset([failed])
    context = lib.Freenect2()
    device = context.openDevice(b'B2', pipeline=lib.CpuPacketPipeline())
    device.startStreams(True, True)
    assert device.getColorCameraParams().fx == 0.0
    device.close()
