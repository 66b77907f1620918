"""The server against hostile peers, devices and arguments: nothing stops a stream.

Peers are real sockets on loopback: a raw ZMTP subscriber (bench/fuzz.py) that floods
subscription prefixes or sends one huge message, plain libzmq SUB sockets. Memory is the
process's RSS (the attacker is a raw socket and keeps nothing).
"""
import asyncio
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time

from blinker import Signal
from conftest import LOOPBACK, run_async, wait_until
from netns import Lan, Lines, namespaces_available
import numpy as np
import psutil
import pytest
from streamkinect2 import codec, server as server_module
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.mock import DepthFrame, MockKinect
from streamkinect2.protocol import decode_frame_message
from streamkinect2.security import CurveServerConfig, make_keypair
from streamkinect2.server import Server
import zmq
from zmq.asyncio import Context as AsyncContext

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
import fuzz  # noqa: E402, I100  (bench/fuzz.py: the flood the script measures)

MIB = 2 ** 20


def _rss():
    gc.collect()
    return psutil.Process().memory_info().rss


def _streaming_client(server, frames):
    client = Client(server.endpoints[EndpointType.control])
    Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                 client, weak=False)
    Client.on_depth_frame.connect(lambda c, depth_frame, kinect_id: frames.append(
        depth_frame), client, weak=False)
    client.connect()
    return client


# --- the depth endpoint's subscriptions ------------------------------------------------

def test_a_subscription_flood_is_cut_off_and_memory_stays_flat():
    # Before: one connection took all 6 MiB and the server grew by some 285 MiB.
    counts = run_async(fuzz.run_subscription_flood(6, seed=8), timeout=180)
    assert counts['server RSS growth MiB'] < 30, counts
    assert counts['MiB sent'] >= 6, counts
    assert counts['connections cut by the server'] >= 1, counts
    assert counts['subscribers cut (server count)'] >= 1, counts
    assert counts['client frames during flood'] > 0, counts
    assert counts['client still streaming'] == 1, counts


def test_without_tcp_info_a_flood_is_cut_off_by_its_message_count(monkeypatch):
    # Where the kernel does not tell how much a peer sent, the server counts messages.
    monkeypatch.setattr(server_module, '_bytes_received', lambda conn: None)
    counts = run_async(fuzz.run_subscription_flood(2, seed=9), timeout=180)
    assert counts['server RSS growth MiB'] < 30, counts
    assert counts['subscribers cut (server count)'] >= 1, counts
    assert counts['client still streaming'] == 1, counts


def test_one_huge_subscription_message_drops_the_peer():
    async def main():
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            frames = []
            client = _streaming_client(server, frames)
            try:
                await wait_until(lambda: len(frames) >= 3, 10, 'frames before')
                before = _rss()
                peer = await fuzz.ZmtpSubscriber.connect(
                    server.device_endpoint(kinect.unique_kinect_id))
                try:
                    peer.send(b'\x01' + bytes(2 * MIB))
                    await peer.drain(10)
                    assert await peer.wait_closed_by_peer(10), 'the server kept the peer'
                finally:
                    await peer.close()
                growth = _rss() - before
                assert growth < 30 * MIB, 'RSS grew by {0:.1f} MiB'.format(growth / MIB)
                count = len(frames)
                await wait_until(lambda: len(frames) >= count + 3, 10, 'frames after')
            finally:
                client.disconnect()
    run_async(main())


def test_plain_sub_sockets_stream_and_a_harmless_prefix_is_not_punished():
    async def main():
        ctx = AsyncContext()
        socks = []
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            endpoint = server.device_endpoint(kinect.unique_kinect_id)
            try:
                for prefix in (b'', b'SK2D'):  # what a client sends, and a prefix it may
                    sub = ctx.socket(zmq.SUB)
                    sub.linger = 0
                    sub.setsockopt(zmq.SUBSCRIBE, prefix)
                    sub.connect(endpoint)
                    socks.append(sub)
                for sub in socks:
                    for _ in range(5):
                        parts = await asyncio.wait_for(sub.recv_multipart(), 10)
                        header, payload = decode_frame_message(parts, 512 * 424)
                        pixels = codec.decode(payload, header.width, header.height,
                                              header.codec)
                        assert np.array_equal(pixels, MockKinect.render_frame(
                            header.sequence))
                stats = server.device_stats(kinect.unique_kinect_id)
                assert stats['subscribers_cut'] == 0
            finally:
                for sub in socks:
                    sub.close(linger=0)
                ctx.term()
    run_async(main())


# --- arguments and failed starts -----------------------------------------------------

@pytest.mark.parametrize('name', ['nul\x00name', 'line\nbreak', 'del\x7f', 'c1\x85',
                                  'x' * 61, '', 'lone \ud800 surrogate', 42])
def test_bad_names_are_refused_before_anything_is_opened(name):
    with pytest.raises(ValueError, match='name'):
        Server(address=LOOPBACK, name=name, announce=False)


@pytest.mark.parametrize('port', [70000, 65536, -5, True, 5000.5, '5000'])
def test_a_control_port_out_of_range_is_refused(port):
    with pytest.raises(ValueError, match='control_port'):
        Server(address=LOOPBACK, announce=False, control_port=port)


def test_a_fixed_control_port_is_the_one_reported():
    async def main():
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
        with Server(address=LOOPBACK, announce=False, control_port=port) as server:
            assert server.endpoints[EndpointType.control] == 'tcp://{0}:{1}'.format(
                LOOPBACK, port)
            assert server.me_payload()['endpoints']['control'].endswith(':{0}'.format(port))
    run_async(main())


def _resources():
    gc.collect()
    return psutil.Process().num_fds(), threading.active_count()


def test_a_curve_server_whose_bind_fails_leaks_nothing(tmp_path):
    # Before: each failed start left a context and an authenticator thread behind.
    make_keypair(str(tmp_path), 'server')
    curve = CurveServerConfig(str(tmp_path / 'server.key_secret'), [])

    async def main():
        with socket.socket() as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            port = taken.getsockname()[1]
            fds, threads = _resources()
            for _ in range(20):
                server = Server(address=LOOPBACK, announce=False, control_port=port,
                                curve=curve)
                with pytest.raises(zmq.ZMQError):
                    server.start()
                assert not server.is_running and server.endpoints == {}
            after = _resources()
            assert after[1] == threads, 'threads: {0} -> {1}'.format(threads, after[1])
            assert after[0] <= fds + 2, 'fds: {0} -> {1}'.format(fds, after[0])
    run_async(main())


class _NoSignalDevice(object):
    """A device without an on_depth_frame signal: opening it fails."""

    unique_kinect_id = 'no-signal'
    is_running = True


@pytest.mark.parametrize('stage', ['device', 'announce'])
def test_a_failed_start_leaves_nothing_behind(stage, monkeypatch):
    def refuse(self, port):
        raise RuntimeError('Zeroconf refused')
    if stage == 'announce':
        monkeypatch.setattr(Server, '_start_announcing', refuse)
    error = AttributeError if stage == 'device' else RuntimeError

    async def main():
        fds, threads = _resources()
        for index in range(10):
            kinect = MockKinect(unique_kinect_id='ok-{0}'.format(index))
            server = Server(address=LOOPBACK, announce=(stage == 'announce'),
                            name='failing {0} {1}'.format(os.getpid(), index))
            server.add_kinect(kinect)
            if stage == 'device':
                server.add_kinect(_NoSignalDevice())
            with pytest.raises(error):
                with server:
                    pass
            assert not server.is_running and server.endpoints == {}
            assert server.device_endpoint(kinect.unique_kinect_id) is None
        after = _resources()
        assert after[1] == threads, 'threads: {0} -> {1}'.format(threads, after[1])
        assert after[0] <= fds + 2, 'fds: {0} -> {1}'.format(fds, after[0])
    run_async(main())


# --- bound to every interface: announce and reply with reachable addresses ------------

@pytest.mark.skipif(namespaces_available() is not None, reason=namespaces_available() or '')
def test_a_server_bound_to_any_address_is_reachable_from_another_host():
    tool = 'import sys; from streamkinect2.tools import {0}; sys.exit({0}())'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with Lan(hosts=2) as lan:
        server_host, client_host = lan.hosts
        address = lan.addresses[server_host]
        name = 'any address {0}'.format(os.getpid())
        server = lan.popen(server_host, [sys.executable, '-c', tool.format(
            'mock_server_main'), '--address', '0.0.0.0', '--name', name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        line = Lines(server).wait_for('serving ', 20)
        assert 'tcp://{0}:'.format(address) in line, line
        receiver = lan.popen(client_host, [sys.executable, '-c', tool.format(
            'receive_main'), '--address', lan.addresses[client_host], '--server-name', name,
            '--duration', '3', '--check-mock'], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=env)
        out, _ = receiver.communicate(timeout=60)
        assert receiver.returncode == 0, out
        assert '{0!r} at tcp://{1}:'.format(name, address) in out, out
        assert '0.0.0.0' not in out, out
        checked = [line for line in out.splitlines() if line.startswith('checked ')]
        assert checked and checked[0].endswith(' 0 mismatched'), out
        assert int(checked[0].split()[1]) > 30, out
        assert lan.stop(server) == 0


# --- health: a device or a compressor that stops shows, and is logged -----------------

class ScriptedDevice(object):
    """A device whose frames the test sends: good, bad, bursts, or none."""

    on_depth_frame = Signal()

    def __init__(self, unique_kinect_id):
        self.unique_kinect_id = unique_kinect_id
        self.is_running = True
        self.fps = 50.0
        self.sequence = 0

    def emit(self, depth_frame=None):
        if depth_frame is None:
            depth_frame = DepthFrame(MockKinect.render_frame(self.sequence),
                                     sequence=self.sequence)
        self.sequence += 1
        self.on_depth_frame.send(self, depth_frame=depth_frame)


class Feeder(object):
    """Feeds a ScriptedDevice from a thread: ``mode`` 'good', 'bad', 'burst' or 'none'."""

    def __init__(self, device):
        self.device = device
        self.mode = 'good'
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='feeder')
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            if self.mode == 'good':
                self.device.emit()
            elif self.mode == 'bad':
                self.device.emit(object())
            elif self.mode == 'burst':
                frame = DepthFrame(MockKinect.render_frame(0))
                for _ in range(200):
                    self.device.emit(frame)

    def close(self):
        self._stop.set()
        self._thread.join(5)


def test_device_health_turns_warn_and_error_and_back_and_is_logged(caplog):
    caplog.set_level(logging.INFO, logger='streamkinect2')

    async def main():
        device = ScriptedDevice('scripted')
        server = Server(address=LOOPBACK, announce=False)
        server.health_period = 0.1
        server.add_kinect(device)
        feeder = Feeder(device)
        seen = []

        async def until(level, text, timeout=10):
            def check():
                health = server.device_health('scripted')
                seen.append(health)
                return health[0] == level and text in health[1]
            await wait_until(check, timeout, '{0} {1!r}; seen {2}'.format(
                level, text, sorted(set(seen))[-5:]))
        try:
            with server:
                await until('OK', 'streaming')
                feeder.mode = 'bad'
                await until('ERROR', 'failed to compress')
                feeder.mode = 'good'
                await until('OK', 'streaming')
                feeder.mode = 'burst'
                await until('WARN', 'dropped')
                feeder.mode = 'good'
                await until('OK', 'streaming')
                device.is_running = False
                await until('ERROR', 'not running')
                device.is_running = True
                feeder.mode = 'none'
                await until('ERROR', 'no depth frame for')
                feeder.mode = 'good'
                await until('OK', 'streaming')
                stats = server.device_stats('scripted')
                assert stats['frames_failed'] > 0 and stats['frames_dropped'] > 0
        finally:
            feeder.close()
        logged = [(r.levelname, r.getMessage()) for r in caplog.records
                  if r.name == 'streamkinect2.server']
        for level, text in [('ERROR', 'failed to compress'), ('WARNING', 'dropped'),
                            ('ERROR', 'not running'), ('ERROR', 'no depth frame for'),
                            ('INFO', 'streaming again')]:
            assert any(lv == level and text in msg for lv, msg in logged), (level, text,
                                                                            logged)
        # The compressor's own error, with its traceback, was logged once, not per frame.
        failures = [r for r in caplog.records if r.name == 'streamkinect2.compress'
                    and r.levelname == 'ERROR']
        assert 1 <= len(failures) <= 3 and failures[0].exc_info
    run_async(main(), timeout=120)


def test_a_stopped_mock_device_shows_as_error():
    async def main():
        kinect = MockKinect(fps=30)
        server = Server(address=LOOPBACK, announce=False)
        server.health_period = 0.1
        server.add_kinect(kinect)
        with kinect, server:
            await wait_until(lambda: server.device_health(kinect.unique_kinect_id)[0] == 'OK'
                             and server.device_stats(kinect.unique_kinect_id)['frames_in'],
                             10, 'OK')
            kinect.stop()
            await wait_until(lambda: server.device_health(kinect.unique_kinect_id)[0]
                             == 'ERROR', 10, 'ERROR')
            started = time.monotonic()
            kinect.start()
            await wait_until(lambda: server.device_health(kinect.unique_kinect_id)[0] == 'OK',
                             10, 'OK again')
            assert time.monotonic() - started < 10
    run_async(main())
