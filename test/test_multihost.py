"""Two hosts in network namespaces: discovery and streaming across a LAN, and faults."""
import os
import subprocess
import sys
import time

import pytest

from netns import Lan, namespaces_available

pytestmark = pytest.mark.skipif(namespaces_available() is not None,
                                reason=namespaces_available() or '')

TOOL = 'import sys; from streamkinect2.tools import {0}; sys.exit({0}())'


def _tool(name, *args):
    return [sys.executable, '-c', TOOL.format(name)] + list(args)


def _env():
    return dict(os.environ, PYTHONUNBUFFERED='1')


def _read_until(process, text, timeout):
    """Read *process*'s output lines until one contains *text*; return all lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError('no {0!r} within {1} s; got:\n{2}'.format(text, timeout,
                                                                  ''.join(lines)))


def test_discovery_and_byte_exact_streaming_across_hosts():
    with Lan(hosts=2) as lan:
        server_host, client_host = lan.hosts
        name = 'lan server {0}'.format(os.getpid())
        server = lan.popen(server_host, _tool(
            'mock_server_main', '--address', lan.addresses[server_host], '--name', name,
            '--devices', '2'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env())
        _read_until(server, 'serving 2 mock device(s)', 20)
        receiver = lan.popen(client_host, _tool(
            'receive_main', '--address', lan.addresses[client_host], '--server-name', name,
            '--duration', '4', '--check-mock'), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=_env())
        out, _ = receiver.communicate(timeout=60)
        assert receiver.returncode == 0, out
        assert 'found server {0!r} at tcp://{1}:'.format(
            name, lan.addresses[server_host]) in out
        assert out.count(' added') == 2
        checked = [line for line in out.splitlines() if line.startswith('checked ')]
        assert checked and checked[0].endswith(' 0 mismatched'), out
        assert int(checked[0].split()[1]) > 2 * 30
        assert lan.stop(server) == 0
