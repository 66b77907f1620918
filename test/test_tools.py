"""The command-line tools, as a user runs them, on loopback."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from streamkinect2.device import STREAMS
from streamkinect2.mock import MockKinect
from streamkinect2.tools import _mock_devices, _mock_server_parser, list_main, receive_main

RGBD = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                                     'shared', 'data', 'rgbd', 'kinect2_sync_rgbd.npz'))


def _start_mock_server(name, *extra):
    code = 'import sys; from streamkinect2.tools import mock_server_main; ' \
           'sys.exit(mock_server_main())'
    return subprocess.Popen(
        [sys.executable, '-c', code, '--address', '127.0.0.1', '--name', name,
         '--duration', '60'] + list(extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED='1'))


def _stop(process):
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_mock_server_list_and_receive(capsys):
    name = 'tools test {0}'.format(os.getpid())
    server = _start_mock_server(name, '--devices', '2')
    try:
        for _ in range(10):  # log lines first, then the banner
            line = server.stdout.readline()
            if line.startswith('serving') or not line:
                break
        assert 'serving 2 mock device(s)' in line and name in line
        deadline = time.monotonic() + 20
        while True:
            assert list_main(['--address', '127.0.0.1', '--timeout', '2']) in (0, 1)
            out = capsys.readouterr().out
            if name in out or time.monotonic() > deadline:
                break
        assert name in out and 'tcp://127.0.0.1:' in out
        assert receive_main(['--address', '127.0.0.1', '--server-name', name,
                             '--duration', '3', '--interval', '1']) == 0
        out = capsys.readouterr().out
        assert out.count('device mock-') >= 2
        reports = [line for line in out.splitlines() if 'frames/s' in line]
        assert reports and all('ratio' in line and 'latency p50' in line for line in reports)
        assert 'invalid 0' in reports[-1]
    finally:
        assert _stop(server) == 0


def test_receive_without_a_server_fails_clearly(capsys):
    assert receive_main(['--address', '127.0.0.1', '--server-name', 'nobody here',
                         '--discovery-timeout', '1']) == 1
    assert 'no server found' in capsys.readouterr().err


# --- mock server options: streams and replay ------------------------------------------

def _devices(*argv):
    return _mock_devices(_mock_server_parser().parse_args(list(argv)))


def _depth_only_npz(tmp_path):
    path = str(tmp_path / 'depth.npz')
    np.savez(path, frames=np.stack([MockKinect.render_frame(s) for s in range(2)]))
    return path


def test_mock_server_streams_option(tmp_path):
    assert [k.streams for k in _devices('--devices', '2')] == [STREAMS, STREAMS]
    assert _devices('--streams', 'color,depth')[0].streams == ('depth', 'color')
    assert _devices('--streams', 'ir')[0].streams == ('depth', 'ir')  # depth always
    assert _devices('--streams', ' depth , ')[0].streams == ('depth',)
    for bad in (['--streams', 'depth,sound'], ['--fps', '0']):
        with pytest.raises(SystemExit, match='error: '):
            _devices(*bad)


def test_mock_server_replays_depth_only_recordings_and_refuses_bad_ones(tmp_path):
    path = _depth_only_npz(tmp_path)
    kinects = _devices('--replay', path, '--devices', '2')
    assert [k.streams for k in kinects] == [('depth',), ('depth',)]
    recorded = np.load(path)['frames']
    assert np.array_equal(kinects[1]._frame_source(3), recorded[1])
    with pytest.raises(SystemExit, match='not recorded'):
        _devices('--replay', path, '--streams', 'color')
    (tmp_path / 'junk.npz').write_bytes(b'not a zip file at all')
    np.savez(str(tmp_path / 'other.npz'), something=np.zeros(3))
    for name in ('missing.npz', 'junk.npz', 'other.npz'):
        with pytest.raises(SystemExit, match='--replay .*' + name):
            _devices('--replay', str(tmp_path / name))


@pytest.mark.skipif(not os.path.exists(RGBD), reason='no ' + RGBD)
def test_mock_server_replays_the_rgbd_sets(capsys):
    kinects = _devices('--replay', RGBD, '--devices', '2')
    assert [k.streams for k in kinects] == [STREAMS, STREAMS]
    # The recording is loaded once and shared.
    assert kinects[0]._frame_source.__self__ is kinects[1]._frame_source.__self__
    with np.load(RGBD) as archive:
        depth, ir, grey = archive['depth'], archive['ir'], archive['color']
    assert np.array_equal(kinects[0]._frame_source(10), depth[1])
    assert np.array_equal(kinects[0]._ir_source(10), ir[1])
    assert np.array_equal(kinects[0]._color_source(10)[:, :, 1], grey[1])
    assert _devices('--replay', RGBD, '--streams', 'ir')[0].streams == ('depth', 'ir')
    # The server process replays it, and a receiver gets its depth.
    name = 'tools replay test {0}'.format(os.getpid())
    server = _start_mock_server(name, '--replay', RGBD, '--no-announce', '--control-port',
                                '0')
    try:
        for _ in range(10):
            line = server.stdout.readline()
            if line.startswith('serving') or not line:
                break
        assert 'serving 1 mock device(s)' in line, line
        endpoint = line.rsplit(' on ', 1)[1].strip()
        assert receive_main([endpoint, '--duration', '3', '--interval', '1']) == 0
        out = capsys.readouterr().out
        assert 'received 0 frames' not in out and 'invalid 0' in out
    finally:
        assert _stop(server) == 0


def test_mock_server_with_a_bad_replay_file_exits_saying_why(tmp_path):
    server = _start_mock_server('tools bad replay', '--replay', str(tmp_path / 'none.npz'))
    try:
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode != 0 and 'none.npz' in output and 'Traceback' not in output


def test_mock_server_colour_options_are_checked_before_anything_runs():
    server = _start_mock_server('tools bad quality', '--color-quality', '0')
    try:
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode != 0 and 'color_quality' in output
    assert 'Traceback' not in output
