"""Two hosts in network namespaces: discovery and streaming across a LAN, and faults."""
import os
import subprocess
import sys
import time

from netns import Lan, Lines, loss_method, namespaces_available
import psutil
import pytest

pytestmark = pytest.mark.skipif(namespaces_available() is not None,
                                reason=namespaces_available() or '')

TOOL = 'import sys; from streamkinect2.tools import {0}; sys.exit({0}())'


def _tool(name, *args):
    return [sys.executable, '-c', TOOL.format(name)] + list(args)


def _env():
    return dict(os.environ, PYTHONUNBUFFERED='1')


def test_discovery_and_byte_exact_streaming_across_hosts():
    with Lan(hosts=2) as lan:
        server_host, client_host = lan.hosts
        name = 'lan server {0}'.format(os.getpid())
        server = lan.popen(server_host, _tool(
            'mock_server_main', '--address', lan.addresses[server_host], '--name', name,
            '--devices', '2'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env())
        Lines(server).wait_for('serving 2 mock device(s)', 20)
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


def _server(lan, host, name, *extra):
    process = lan.popen(host, _tool('mock_server_main', '--address', lan.addresses[host],
                                    '--name', name) + list(extra),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env=_env())
    lines = Lines(process)
    lines.wait_for('serving ', 20)
    return process, lines


def _receiver(lan, host, name, duration=60):
    process = lan.popen(host, _tool('receive_main', '--address', lan.addresses[host],
                                    '--server-name', name, '--duration', str(duration),
                                    '--check-mock'),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env=_env())
    return process, Lines(process)


def _finish(lan, receiver, lines):
    assert lan.stop(receiver) == 0, lines.text()
    checked = lines.wait_for('checked ', 10)
    assert checked.rstrip().endswith(' 0 mismatched'), lines.text()
    return int(checked.split()[1])


def test_server_killed_then_restarted():
    with Lan(hosts=2) as lan:
        server_host, client_host = lan.hosts
        name = 'restart {0}'.format(os.getpid())
        server, _ = _server(lan, server_host, name)
        receiver, lines = _receiver(lan, client_host, name)
        lines.wait_for('frames/s', 30)
        server.kill()
        killed = time.monotonic()
        lines.wait_for('server went away', 10)
        # response_timeout is 2 s; the report interval adds up to 1 s.
        assert time.monotonic() - killed < 2.0 + 1.0 + 1.0
        server, _ = _server(lan, server_host, name)
        restarted = time.monotonic()
        lines.wait_for(' added', 20)
        lines.wait_for('frames/s', 10)
        assert time.monotonic() - restarted < 15
        assert _finish(lan, receiver, lines) > 30
        assert lan.stop(server) == 0


def test_link_down_then_up():
    with Lan(hosts=2) as lan:
        server_host, client_host = lan.hosts
        name = 'flaky link {0}'.format(os.getpid())
        server, _ = _server(lan, server_host, name)
        receiver, lines = _receiver(lan, client_host, name)
        lines.wait_for('frames/s', 30)
        rss_before = psutil.Process(receiver.pid).memory_info().rss
        lan.link(client_host, False)
        lines.wait_for('server went away', 10)
        time.sleep(3)  # the link stays down a while longer: nothing may pile up
        lan.link(client_host, True)
        lines.wait_for(' added', 30)
        lines.wait_for('frames/s', 10)
        rss_after = psutil.Process(receiver.pid).memory_info().rss
        assert rss_after - rss_before < 50 * 2 ** 20
        assert _finish(lan, receiver, lines) > 30
        assert lan.stop(server) == 0


@pytest.mark.skipif(loss_method() is None, reason='neither tc netem nor nftables works here')
def test_packet_loss_is_survived_and_never_corrupts():
    with Lan(hosts=2) as lan:
        server_host, client_host = lan.hosts
        name = 'lossy {0}'.format(os.getpid())
        server, _ = _server(lan, server_host, name)
        # 2 % of the server's packets lost: TCP retransmits, frames arrive late or are
        # dropped by the high-water marks, none corrupted.
        lan.drop_packets(server_host, 2, loss_method())
        receiver, lines = _receiver(lan, client_host, name)
        lines.wait_for('frames/s', 30)
        for _ in range(3):
            report = lines.wait_for('frames/s', 10)
            assert 'invalid 0' in report
        assert _finish(lan, receiver, lines) > 30
        assert lan.stop(server) == 0


SILENT = """
import sys, time, asyncio
from tornado.ioloop import IOLoop
from streamkinect2.client import Client
async def main():
    client = Client(sys.argv[1], io_loop=IOLoop.current())
    got = asyncio.Event()
    Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                 client, weak=False)
    Client.on_depth_frame.connect(lambda c, depth_frame, kinect_id: got.set(), client,
                                  weak=False)
    client.connect()
    await got.wait()
    print('subscribed; now never reading again', flush=True)
    time.sleep(3600)  # blocks the loop: nothing is read from the sockets any more
asyncio.run(main())
"""


def test_silent_and_slow_subscribers_leave_the_server_bounded():
    with Lan(hosts=3) as lan:
        server_host, fast_host, slow_host = lan.hosts
        name = 'bounded {0}'.format(os.getpid())
        server, server_lines = _server(lan, server_host, name, '--control-port', '47001')
        endpoint = 'tcp://{0}:47001'.format(lan.addresses[server_host])
        silent = lan.popen(fast_host, [sys.executable, '-c', SILENT, endpoint],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=_env())
        Lines(silent).wait_for('never reading', 30)
        lan.shape(slow_host, 'tbf', 'rate', '4mbit', 'burst', '32kb', 'latency', '500ms')
        slow, slow_lines = _receiver(lan, slow_host, name)
        fast, fast_lines = _receiver(lan, fast_host, name)
        fast_lines.wait_for('frames/s', 30)
        slow_lines.wait_for('frames/s', 30)
        server_ps = psutil.Process(server.pid)
        rss = [server_ps.memory_info().rss]
        for _ in range(6):
            report = fast_lines.wait_for('frames/s', 10)
            rss.append(server_ps.memory_info().rss)
        fps = float(report.split(':')[1].split()[0])
        assert fps > 20, fast_lines.text()
        assert max(rss) - rss[0] < 30 * 2 ** 20, rss
        assert _finish(lan, fast, fast_lines) > 100
        _finish(lan, slow, slow_lines)
        assert lan.stop(server) == 0


# --- the ROS 2 nodes across hosts -----------------------------------------------------

def _ros_available():
    try:
        import rclpy  # noqa: F401
        import sensor_msgs.msg  # noqa: F401
    except ImportError as err:
        return 'rclpy is not installed ({0})'.format(err)
    return None


def _node(lan, host, module, **params):
    args = [sys.executable, '-m', 'streamkinect2_ros.' + module, '--ros-args']
    for name, value in params.items():
        args += ['-p', '{0}:={1}'.format(name, value)]
    env = dict(_env(), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(1 + os.getpid() % 100))
    process = lan.popen(host, args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, env=env)
    return process, Lines(process)


def _probe(lan, host, topic, seconds):
    env = dict(_env(), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_DOMAIN_ID=str(1 + os.getpid() % 100))
    process = lan.popen(host, [sys.executable, os.path.join(os.path.dirname(__file__),
                                                            'ros_probe.py'),
                               topic, str(seconds)],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return process, Lines(process)


def _images(line):
    words = line.split()
    return int(words[1]), int(words[3])


def _settled_images(lines, timeout):
    """Return the probe's count once three reports in a row (a second) agree.

    Reports queue up, and Images published before the server went away may still be
    on their way through the middleware: only a count that stopped moving is the one
    no later Image may change.
    """
    deadline = time.monotonic() + timeout
    counts = []
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        if time.monotonic() > deadline:
            raise AssertionError('the Image count kept moving: {0}'.format(counts))
        counts.append(_images(lines.wait_for('images ', 5))[0])
    return counts[-1]


def _wait_images(lines, more_than, timeout):
    deadline = time.monotonic() + timeout
    while True:
        line = lines.wait_for('images ', max(0.5, deadline - time.monotonic()))
        images, exact = _images(line)
        if images > more_than or time.monotonic() > deadline:
            return images, exact


@pytest.mark.skipif(_ros_available() is not None, reason=_ros_available() or '')
def test_ros_nodes_across_hosts_and_a_server_restart():
    with Lan(hosts=3) as lan:
        server_host, client_hosts = lan.hosts[0], lan.hosts[1:]
        name = 'ros lan {0}'.format(os.getpid())
        server_params = {'server_name': '"{0}"'.format(name), 'mock_ids': '[cam_a]',
                         'address': lan.addresses[server_host]}
        server, _ = _node(lan, server_host, 'server_node', **server_params)
        clients, probes = [], []
        for host in client_hosts:  # a client node and a subscriber on each other host
            clients.append(_node(lan, host, 'client_node', server_name='"{0}"'.format(name),
                                 discovery_address=lan.addresses[host]))
            probes.append(_probe(lan, host, '/cam_a/depth/image_raw', 90)[1])
        for probe_lines in probes:
            images, exact = _wait_images(probe_lines, 30, 40)
            assert images > 30 and exact == images, probe_lines.text()
            assert 'frame_id kinect2_cam_a_depth_optical_frame' in probe_lines.lines[-1]

        # The server dies: the clients say so, and publish nothing stale.
        server.kill()
        for _, client_lines in clients:
            client_lines.wait_for('went away', 10)
        stopped = [_settled_images(p, 15) for p in probes]
        time.sleep(2)  # a window in which nothing may arrive
        assert [_settled_images(p, 10) for p in probes] == stopped
        # It comes back: each client finds it again by name and publishes again.
        server, _ = _node(lan, server_host, 'server_node', **server_params)
        restarted = time.monotonic()
        for probe_lines, before in zip(probes, stopped):
            images, exact = _wait_images(probe_lines, before + 10, 30)
            assert images > before + 10 and exact == images, probe_lines.text()
        assert time.monotonic() - restarted < 25
        for process in [c for c, _ in clients] + [server]:
            assert lan.stop(process) == 0
