"""The command-line tools, as a user runs them, on loopback."""
import os
import signal
import subprocess
import sys
import time

from streamkinect2.tools import list_main, receive_main


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
