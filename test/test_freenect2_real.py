"""The backend and the stand-in against the REAL pylibfreenect2 (no sensor needed).

The real binding (r9y9/pylibfreenect2 with libfreenect2 bundled: ../shared/freenect2-wheel,
installed by ``./dev.sh``) and the stand-in are both importable as ``pylibfreenect2``, and
a failure here can be a segfault: every check runs in a child interpreter that imports
one of them, chosen by its path. Without the real binding these tests skip, saying why.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from streamkinect2.freenect2_device import COLOR_MAPPING_KEYS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STANDIN = os.path.join(HERE, 'standin')


def run_python(code, standin=False, scenario=None, timeout=60.0):
    """Run *code* in a child interpreter with the real binding (or the stand-in)."""
    env = dict(os.environ)
    paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
             if p and os.path.abspath(p) != STANDIN]
    env['PYTHONPATH'] = os.pathsep.join(([STANDIN] if standin else []) + [REPO] + paths)
    env['PYTHONFAULTHANDLER'] = '1'
    env.pop('STANDIN_FREENECT2', None)
    if scenario is not None:
        env['STANDIN_FREENECT2'] = json.dumps(scenario)
    for name in ('DISPLAY', 'WAYLAND_DISPLAY', 'LIBFREENECT2_PIPELINE'):
        env.pop(name, None)
    code = PRELUDE + textwrap.dedent(code)
    return subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def real():
    """Skip unless the real pylibfreenect2 imports here."""
    proc = run_python('import pylibfreenect2; print_out(pylibfreenect2.__file__)')
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        pytest.skip('the real pylibfreenect2 is not importable here ({0}); ./dev.sh '
                    'installs it from ../shared/freenect2-wheel on CPython 3.11 '
                    'x86_64'.format(reason))
    assert STANDIN not in proc.stdout


def check(proc, what):
    """Return the lines the child printed with print_out() (libfreenect2 logs to stdout)."""
    assert proc.returncode == 0, '{0}: exit {1} ({2})\nstdout:\n{3}\nstderr:\n{4}'.format(
        what, proc.returncode,
        'segfault' if proc.returncode == -11 else 'error', proc.stdout, proc.stderr)
    return '\n'.join(line[len(OUT):] for line in proc.stdout.splitlines()
                     if line.startswith(OUT))


OUT = 'OUT '
PRELUDE = ('def print_out(*args):\n'
           "    print({0!r} + ' '.join(str(a) for a in args), flush=True)\n").format(OUT)


# --- defects 1 and 2: opening a listed serial ------------------------------------------

def test_a_serial_is_opened_as_bytes_and_a_null_device_is_reported(real):
    """Real openDevice: a str serial is a TypeError; an unopenable one a NULL device.

    Without a sensor the real libfreenect2 returns NULL for any serial, exactly as for a
    listed sensor that is busy, not permitted or on USB 2; the first call on it
    (``start()`` here) would segfault the child.
    """
    out = check(run_python("""
        import logging
        logging.basicConfig(level=logging.INFO)
        import pylibfreenect2 as lib
        from streamkinect2.freenect2_device import Freenect2Kinect, Freenect2Unavailable
        context = lib.Freenect2()
        try:
            device = Freenect2Kinect(context, '003726450247', pipeline='cpu', lib=lib)
        except Freenect2Unavailable as err:
            print_out('UNAVAILABLE', err)
        else:
            print_out('OPENED')
            device.start()
    """), 'opening a serial with the real binding')
    assert out.startswith('UNAVAILABLE could not open sensor 003726450247: libfreenect2 '
                          'returned no device'), out
    for cause in ('in use by another', 'udev rules', 'USB 3'):
        assert cause in out


def test_the_null_device_check_reads_the_real_binding_layout(real):
    out = check(run_python("""
        import pylibfreenect2 as lib
        from streamkinect2.freenect2_device import is_null_device
        context = lib.Freenect2()
        print_out(is_null_device(context.openDevice(b'003726450247', lib.CpuPacketPipeline())))
        print_out(is_null_device(context.openDevice(0, lib.CpuPacketPipeline())))
        print_out(is_null_device(lib.Freenect2Device()))
        print_out(is_null_device(lib.IrCameraParams()))  # not a device: cannot tell
    """), 'is_null_device')
    assert out.split() == ['True', 'True', 'True', 'None']


# --- defect 5: the camera parameters of a sensor that did not start ---------------------

def test_unread_camera_parameters_are_rejected(real):
    """The real IrCameraParams: C floats, 0 where startStreams never wrote them."""
    out = check(run_python("""
        import pylibfreenect2 as lib
        from streamkinect2.freenect2_device import Freenect2Unavailable, read_depth_camera
        params = lib.IrCameraParams()
        try:
            read_depth_camera(params, 'A1')
        except Freenect2Unavailable as err:
            print_out('REJECTED', err)
        params.fx, params.fy, params.cx, params.cy = 365.5, 365.25, 257.5, 205.0
        camera = read_depth_camera(params, 'A1')
        print_out(sorted(camera.items()))
    """), 'read_depth_camera')
    rejected, camera = out.splitlines()
    assert rejected.startswith('REJECTED could not start sensor A1: ')
    assert 'fx = 0' in rejected and 'USB 3' in rejected
    # Un-mirrored, as the frames: cx taken to 511 - cx (p2 would change sign).
    assert camera == str(sorted({'width': 512, 'height': 424, 'fx': 365.5, 'fy': 365.25,
                                 'cx': 253.5, 'cy': 205.0, 'k1': 0.0, 'k2': 0.0, 'k3': 0.0,
                                 'p1': 0.0, 'p2': -0.0}.items()))


def test_unread_colour_camera_parameters_are_rejected(real):
    """The real ColorCameraParams: fx, fy, cx, cy and the mapping terms, C floats."""
    out = check(run_python("""
        import pylibfreenect2 as lib
        from streamkinect2.freenect2_device import (COLOR_MAPPING_KEYS,
                                                    Freenect2Unavailable, read_color_camera)
        params = lib.ColorCameraParams()
        try:
            read_color_camera(params, 'A1')
        except Freenect2Unavailable as err:
            print_out('REJECTED', err)
        params.fx, params.fy, params.cx, params.cy = 1081.5, 1081.25, 955.5, 539.5
        for k, name in enumerate(COLOR_MAPPING_KEYS):
            setattr(params, name, k + 0.5)
        print_out(sorted(read_color_camera(params, 'A1').items()))
    """), 'read_color_camera')
    rejected, camera = out.splitlines()
    assert rejected.startswith('REJECTED could not start sensor A1: its colour camera ')
    assert 'fx = 0' in rejected
    # Intrinsics un-mirrored (cx to 1919 - cx); the mapping terms libfreenect2's own.
    expected = {'width': 1920, 'height': 1080, 'fx': 1081.5, 'fy': 1081.25, 'cx': 963.5,
                'cy': 539.5, 'k1': 0.0, 'k2': 0.0, 'k3': 0.0, 'p1': 0.0, 'p2': -0.0}
    expected.update((name, k + 0.5) for k, name in enumerate(COLOR_MAPPING_KEYS))
    assert camera == str(sorted(expected.items()))


def test_the_colour_format_is_read_from_the_real_frame(real):
    """pylibfreenect2 does not wrap Frame::format: it is read from the C++ frame.

    The reader checks the layout first (width, height, bytes per pixel and data pointer
    where the binding reports them); a fresh frame is Frame::Invalid (0), a NULL one
    (a type the listener did not deliver) cannot be told and is not dereferenced.
    """
    out = check(run_python("""
        import ctypes
        import numpy as np
        import pylibfreenect2 as lib
        from streamkinect2 import freenect2_device as fd
        frame = lib.Frame(1920, 1080, 4, frame_type=lib.FrameType.Color)
        print_out(fd.frame_format(frame))
        print_out(fd.frame_format(lib.FrameMap()['color']))  # NULL: None, no segfault
        print_out(fd.frame_format(lib.IrCameraParams()))  # not a frame
        # As libfreenect2's Tegra decoder does: frame->format = Frame::RGBX.
        pointer = ctypes.c_void_p.from_address(id(frame) + fd._FRAME_PTR_OFFSET).value
        header = fd._CFrameHeader.from_address(pointer)
        header.format = fd.FORMAT_RGBX
        print_out(fd.frame_format(frame))
        pixels = frame.asarray(np.uint8)
        pixels[...] = (30, 20, 10, 255)  # R, G, B, X
        pixels[3, 4] = (31, 21, 11, 254)  # un-mirrored: at column 1919 - 4
        bgrx = fd.color_to_bgrx(frame)
        print_out(bgrx[3, 4].tolist(), bgrx[3, 1915].tolist(), bgrx.flags.c_contiguous)
        header.format = fd.FORMAT_BGRX
        bgrx = fd.color_to_bgrx(frame)
        print_out(fd.frame_format(frame), bgrx[3, 4].tolist(), bgrx[3, 1915].tolist(),
                  bgrx.flags.c_contiguous)
    """), 'frame_format')
    assert out.splitlines() == ['0', 'None', 'None', '5',
                                '[10, 20, 30, 255] [11, 21, 31, 254] True',
                                '4 [30, 20, 10, 255] [31, 21, 11, 254] True']


def test_the_backend_without_a_sensor_names_the_cause(real):
    out = check(run_python("""
        from streamkinect2_ros import backends
        try:
            backends.create_devices('freenect2', {'freenect2_serials': ['003726450247']})
        except backends.BackendError as err:
            print_out(err)
    """), 'the backend with the real binding')
    assert out.startswith('device "freenect2": no Kinect v2 sensor found'), out


def test_an_import_failing_for_pkg_resources_says_which_setuptools(real):
    """The real ``import pylibfreenect2`` needs pkg_resources, gone from setuptools 81."""
    out = check(run_python("""
        import sys
        sys.modules['pkg_resources'] = None  # as with setuptools 81 and later
        from streamkinect2.freenect2_device import Freenect2Unavailable, open_devices
        try:
            open_devices()
        except Freenect2Unavailable as err:
            print_out(err)
    """), 'importing without pkg_resources')
    assert out.startswith('pylibfreenect2 cannot be imported: it needs pkg_resources'), out
    assert '"setuptools<81"' in out


# --- the stand-in's API is the real one --------------------------------------------------

CONTRACT = """
import ctypes
import numpy as np
import pylibfreenect2 as lib


def outcome(call):
    try:
        value = call()
    except Exception as err:
        return 'raises ' + type(err).__name__
    if isinstance(value, lib.Freenect2Device):
        null = ctypes.c_void_p.from_address(id(value) + object.__basicsize__).value is None
        return 'NULL device' if null else 'device'
    if isinstance(value, np.ndarray):
        return 'array {0} {1}'.format(value.dtype, value.shape)
    if isinstance(value, (lib.Frame, lib.FrameMap, lib.SyncMultiFrameListener)):
        return type(value).__name__
    return repr(value)


def message(call):
    try:
        call()
    except Exception as err:
        return '{0}: {1}'.format(type(err).__name__, err)


def set_fx(value, cls=None):
    params = (cls or lib.IrCameraParams)()
    params.fx = value
    return params.fx


def color_params_fields():
    params = lib.ColorCameraParams()
    return [(name, type(getattr(params, name)).__name__, getattr(params, name))
            for name in dir(params) if not name.startswith('_')]


def set_color_params():
    params = lib.ColorCameraParams()
    for k, name in enumerate(n for n in dir(params) if not n.startswith('_')):
        setattr(params, name, 0.1 * k + 0.01)
    return [getattr(params, name) for name in dir(params) if not name.startswith('_')]


def frame(frame_type=-1, **kwargs):
    return lib.Frame(512, 424, 4, frame_type=frame_type, **kwargs)


context = lib.Freenect2()
cpu = lib.CpuPacketPipeline
listener = lib.SyncMultiFrameListener(lib.FrameType.Depth)
checks = [
    ('FrameType', lambda: [(t.name, int(t)) for t in lib.FrameType]),
    ('pipelines', lambda: sorted(n for n in dir(lib) if n.endswith('PacketPipeline')
                                 and not n.startswith('_'))),
    ('Freenect2Device layout', lambda: lib.Freenect2Device.__basicsize__
     - object.__basicsize__),
    ('enumerateDevices()', lambda: context.enumerateDevices()),
    ('getDeviceSerialNumber(0)', lambda: context.getDeviceSerialNumber(0)),
    ('getDeviceSerialNumber(-1)', lambda: context.getDeviceSerialNumber(-1)),
    ("getDeviceSerialNumber('0')", lambda: context.getDeviceSerialNumber('0')),
    ('getDefaultDeviceSerialNumber()', lambda: context.getDefaultDeviceSerialNumber()),
    ("openDevice(str)", lambda: message(lambda: context.openDevice('0037', cpu()))),
    ('openDevice(bytes)', lambda: context.openDevice(b'003726450247', cpu())),
    ('openDevice(bytes, pipeline=)', lambda: context.openDevice(b'0037', pipeline=cpu())),
    ('openDevice(3)', lambda: context.openDevice(3, cpu())),
    ('openDevice(1.5)', lambda: context.openDevice(1.5, cpu())),
    ("openDevice(b'', 'cpu')", lambda: context.openDevice(b'0037', 'cpu')),
    ('Frame(512, 424, 4).asarray(float32)', lambda: frame().asarray(np.float32)),
    ('Frame(512, 424, 4).asarray(uint8)', lambda: frame().asarray(np.uint8)),
    ('Frame(512, 424, 4).asarray()', lambda: frame().asarray()),
    ('Frame(512, 424, 4).asarray(uint16)', lambda: frame().asarray(np.uint16)),
    ('Frame(..., frame_type=4).asarray()', lambda: frame(4).asarray()),
    ('Frame(..., frame_type=1).asarray()', lambda: frame(1).asarray()),
    ('Frame(numpy_array=)', lambda: float(frame(numpy_array=np.full(
        (424, 512), 7, np.float32)).asarray(np.float32)[5, 5])),
    ('frame sizes', lambda: (frame().width, frame().height, frame().bytes_per_pixel)),
    ('frame.timestamp = 1', lambda: setattr(frame(), 'timestamp', 1)),
    ('frame.sequence = 1', lambda: setattr(frame(), 'sequence', 1)),
    ('frame.width = 1', lambda: setattr(frame(), 'width', 1)),
    ("FrameMap()['color']", lambda: lib.FrameMap()['color']),
    ('FrameMap()[FrameType.Depth]', lambda: lib.FrameMap()[lib.FrameType.Depth]),
    ('FrameMap()[2]', lambda: lib.FrameMap()[2]),
    ("FrameMap()['rgb']", lambda: lib.FrameMap()['rgb']),
    ('FrameMap()[3]', lambda: lib.FrameMap()[3]),
    ('FrameMap()[2.5]', lambda: lib.FrameMap()[2.5]),
    ('SyncMultiFrameListener()', lambda: lib.SyncMultiFrameListener()),
    ("SyncMultiFrameListener('x')", lambda: lib.SyncMultiFrameListener('x')),
    ('SyncMultiFrameListener(-1)', lambda: lib.SyncMultiFrameListener(-1)),
    ('hasNewFrame()', lambda: listener.hasNewFrame()),
    ('waitForNewFrame(milliseconds=0)', lambda: listener.waitForNewFrame(milliseconds=0)),
    ('waitForNewFrame(None, 1)', lambda: listener.waitForNewFrame(None, 1)),
    ("waitForNewFrame('x', 1)", lambda: listener.waitForNewFrame('x', 1)),
    ('release(FrameMap())', lambda: listener.release(lib.FrameMap())),
    ('IrCameraParams().fx', lambda: lib.IrCameraParams().fx),
    ('IrCameraParams().fx = 366.1', lambda: set_fx(366.1)),
    ('IrCameraParams(fx=1).fx', lambda: lib.IrCameraParams(fx=1).fx),
    ('IrCameraParams().zz = 1', lambda: setattr(lib.IrCameraParams(), 'zz', 1)),
    ('Freenect2Device() is NULL', lambda: lib.Freenect2Device()),
    ('IrCameraParams().fx = str', lambda: set_fx('1.5')),
    # Colour (issue 10): the colour camera's parameters, colour frames, listener masks.
    ('ColorCameraParams() fields', color_params_fields),
    ('ColorCameraParams() set', set_color_params),
    ('ColorCameraParams().fx = 1081.37', lambda: set_fx(1081.37, lib.ColorCameraParams)),
    ('ColorCameraParams().fx = str', lambda: set_fx('1.5', lib.ColorCameraParams)),
    ('ColorCameraParams(fx=1).fx', lambda: lib.ColorCameraParams(fx=1).fx),
    ('ColorCameraParams().k1', lambda: lib.ColorCameraParams().k1),
    ('ColorCameraParams().zz = 1', lambda: setattr(lib.ColorCameraParams(), 'zz', 1)),
    ('Frame(1920, 1080, 4, frame_type=1).asarray()',
     lambda: lib.Frame(1920, 1080, 4, frame_type=1).asarray()),
    ('Frame(1920, 1080, 4, frame_type=1).asarray(float32)',
     lambda: lib.Frame(1920, 1080, 4, frame_type=1).asarray(np.float32)),
    ('Frame(..., frame_type=2).asarray()', lambda: frame(2).asarray()),
    ('Frame has format', lambda: hasattr(frame(1), 'format')),
    ('FrameMap()[FrameType.Color]', lambda: lib.FrameMap()[lib.FrameType.Color]),
    ('FrameType.Ir | FrameType.Depth', lambda: repr(lib.FrameType.Ir | lib.FrameType.Depth)),
    ('SyncMultiFrameListener(Ir | Depth)',
     lambda: lib.SyncMultiFrameListener(lib.FrameType.Ir | lib.FrameType.Depth)),
    ('SyncMultiFrameListener(Color)', lambda: lib.SyncMultiFrameListener(lib.FrameType.Color)),
    ('SyncMultiFrameListener(Color).hasNewFrame()',
     lambda: lib.SyncMultiFrameListener(lib.FrameType.Color).hasNewFrame()),
    ('SyncMultiFrameListener(Color).waitForNewFrame(milliseconds=1)',
     lambda: lib.SyncMultiFrameListener(lib.FrameType.Color).waitForNewFrame(milliseconds=1)),
    ('SyncMultiFrameListener(Ir | Depth | Color | 8)',
     lambda: lib.SyncMultiFrameListener(15)),
    ('Freenect2Device().getColorCameraParams', lambda: callable(
        lib.Freenect2Device.getColorCameraParams)),
    ('Freenect2Device().setColorFrameListener', lambda: callable(
        lib.Freenect2Device.setColorFrameListener)),
]
for name, call in checks:
    print_out('CHECK {0} -> {1}'.format(name, outcome(call)))
"""


def test_the_stand_in_answers_as_the_real_binding_does(real):
    """Every check that needs no sensor, through both; the real answers pinned too.

    The real wheel's libfreenect2 is built with ENABLE_CXX11=ON, so the stand-in is
    scripted the same for this comparison (``cxx11``); the default build blocks instead
    (test_freenect2_standin.py).
    """
    real_out = check(run_python(CONTRACT), 'the contract, real binding').splitlines()
    standin_out = check(run_python(CONTRACT, standin=True, scenario={'cxx11': True}),
                        'the contract, stand-in').splitlines()
    differences = ['real:     {0}\nstand-in: {1}'.format(a, b)
                   for a, b in zip(real_out, standin_out) if a != b]
    assert len(real_out) == len(standin_out) and not differences, '\n'.join(differences)
    answers = dict(line[len('CHECK '):].split(' -> ', 1) for line in real_out)
    assert answers['openDevice(str)'] == "'TypeError: expected bytes, str found'"
    assert answers['openDevice(bytes)'] == 'NULL device'
    assert answers['getDeviceSerialNumber(-1)'] == "b''"
    assert answers['Frame(512, 424, 4).asarray(uint8)'] == 'array uint8 (424, 512, 4)'
    assert answers["FrameMap()['color']"] == 'Frame'
    assert answers['waitForNewFrame(milliseconds=0)'] == 'None'
    assert answers['frame.timestamp = 1'] == 'raises AttributeError'
    assert answers['IrCameraParams().fx = 366.1'] == repr(366.1000061035156)
    assert answers['ColorCameraParams().fx = str'] == 'raises TypeError'
    assert answers['Frame has format'] == 'False'  # pylibfreenect2 does not wrap it
    assert answers['Frame(1920, 1080, 4, frame_type=1).asarray()'] == \
        'array uint8 (1080, 1920, 4)'
    assert answers['ColorCameraParams().k1'] == 'raises AttributeError'  # no distortion
    fields = eval(answers['ColorCameraParams() fields'])  # a list of (name, type, value)
    assert [name for name, _, _ in fields] == sorted(
        ('fx', 'fy', 'cx', 'cy') + COLOR_MAPPING_KEYS)
    assert {(kind, value) for _, kind, value in fields} == {('float', 0.0)}
