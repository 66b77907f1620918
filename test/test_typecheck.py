"""Type-check the public API with mypy, as the README uses it and as it must not be used.

``typecheck_usage.py`` (the README's usage, annotated as a user would) must check
clean; ``MISUSE`` (below) must fail exactly where the library's hints say it is wrong,
so the check cannot pass by seeing only ``Any``. Those two runs look at the API surface
only (``--follow-imports=silent``); :py:func:`test_the_library_type_checks_clean` checks
the library's own modules, every one of them, with ``LIBRARY_FLAGS``.
"""
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Misuse of typed API, one error expected per line marked ``# error``.
MISUSE = """\
import numpy as np

from streamkinect2.codec import decode, encode
from streamkinect2.compress import DepthFrameCompressor, encode_frame_message
from streamkinect2.device import DepthFrame, as_depth_frame
from streamkinect2.freenect2_device import depth_to_uint16, open_devices
from streamkinect2.mock import MockKinect
from streamkinect2.protocol import FrameHeader, MessageType, encode_control
from streamkinect2.security import load_keypair, load_public_key
from streamkinect2.server import Server
from streamkinect2.stats import SequenceGaps, Window
from streamkinect2.tools import receive_main

frame = DepthFrame(np.zeros((424, 512), np.uint16), sequence=3)
name: str = frame.sequence  # error
width: str = frame.shape[0]  # error
as_depth_frame(frame, sequence='7')  # error
key: str = load_public_key('server.key')  # error
public, secret = load_keypair('robot.key_secret')
secret.encode()  # error
rate: str = Window().rate()  # error
SequenceGaps().add('12')  # error
frames: str = encode_control(MessageType.ping)  # error
FrameHeader(0, 512, 424, 0, 1, 2, 3)  # error
kinect = MockKinect(fps=30.0)
kinect_id: int = kinect.unique_kinect_id  # error
MockKinect(frame_source=str)  # error
server = Server(address='127.0.0.1', announce=False)
Server(control_port='5555')  # error
endpoint: str = server.device_endpoint(kinect_id='k')  # error
received: str = server.device_stats('k')['frames_in']  # error
server.kinects.add(kinect)  # error
compressor = DepthFrameCompressor(kinect, codec=1)
lag: int = compressor.seconds_since_frame()  # error
error: str = compressor.last_error  # error
encode_frame_message(frame, codec='raw')  # error
payload: str = encode(frame.array)  # error
decode(b'', 512, 424, codec=None)  # error
millimetres: bytes = depth_to_uint16(frame.array)  # error
open_devices(serials='A1')[0].depth_camera['fx']  # error
receive_main(['--interval', 1])  # error
"""


#: How the library itself must check (pylibfreenect2 has no stubs: missing imports pass).
LIBRARY_FLAGS = ['--check-untyped-defs', '--ignore-missing-imports', '--follow-imports=silent']
PACKAGE = 'streamkinect2'


@pytest.fixture(scope='module')
def mypy_tmp(tmp_path_factory):
    """Return this module's temporary directory; its ``cache`` serves every mypy run."""
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip('mypy is not installed: pip install mypy (or the "test" extra)')
    return tmp_path_factory.mktemp('mypy')


@pytest.fixture(scope='module')
def mypy_output(mypy_tmp):
    """Run mypy once over the usage file and the misuse file; return its output."""
    tmp = mypy_tmp
    misuse = tmp / 'typecheck_misuse.py'
    misuse.write_text(MISUSE)
    command = [sys.executable, '-m', 'mypy', '--cache-dir', str(tmp / 'cache'),
               '--follow-imports=silent', '--check-untyped-defs', '--warn-unused-ignores',
               '--show-error-codes', '--no-error-summary', '--no-color-output',
               os.path.join(HERE, 'typecheck_usage.py'), str(misuse)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert 'error: ' not in result.stderr, result.stderr  # mypy itself failed
    return result.stdout


def _errors(output, filename):
    return [line for line in output.splitlines()
            if re.match(r'(.*[\\/])?{0}:\d+: error:'.format(re.escape(filename)), line)]


def test_readme_usage_type_checks(mypy_output):
    assert _errors(mypy_output, 'typecheck_usage.py') == []


def test_misuse_is_caught_on_every_marked_line(mypy_output):
    expected = [n for n, line in enumerate(MISUSE.splitlines(), 1) if '# error' in line]
    found = sorted({int(line.split(':')[1])
                    for line in _errors(mypy_output, 'typecheck_misuse.py')})
    assert found == expected, mypy_output


def test_the_library_type_checks_clean(mypy_tmp):
    """``mypy LIBRARY_FLAGS streamkinect2`` reports no error, and looked at every module."""
    command = [sys.executable, '-m', 'mypy', '--cache-dir', str(mypy_tmp / 'cache'),
               *LIBRARY_FLAGS, '--show-error-codes', '--no-color-output', PACKAGE]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert 'error: ' not in result.stderr, result.stderr  # mypy itself failed
    assert [line for line in result.stdout.splitlines() if ' error: ' in line] == []
    modules = [name for name in os.listdir(os.path.join(ROOT, PACKAGE))
               if name.endswith('.py')]
    assert result.stdout.strip() == 'Success: no issues found in {0} source files'.format(
        len(modules)), result.stdout
    assert result.returncode == 0, result.stdout
