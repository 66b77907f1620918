"""Test hosts in network namespaces joined by a bridge: a small LAN on this machine.

``with Lan(hosts=2) as lan:`` creates namespaces ``<prefix>-h1``, ``<prefix>-h2``, … and
a bridge namespace ``<prefix>-sw`` holding a Linux bridge; each host gets a veth into the
bridge and an address in 198.18.N.0/24 (the RFC 2544 benchmarking range, never routed
out: the namespaces have no other link). Traffic, mDNS included, stays on that LAN.
Everything is torn down on exit, processes first. Needs root and iproute2.

Also here, for the clock-offset test (test_clock_netns.py) and its benchmark
(bench/bench_clock.py): a server process whose clock is off by a known amount
(:py:func:`start_clock_server`), a client process that measures the corrected stamps'
error against it (:py:func:`measure_clock`), and a relay that delays a TCP connection's
bytes by a fixed time each way (:py:func:`delay_relay`).
"""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time


def _ip(*args, check=True):
    return subprocess.run(['ip'] + list(args), check=check, capture_output=True, text=True)


def namespaces_available():
    """Return None if namespaces can be made here, else the reason they cannot."""
    if shutil.which('ip') is None:
        return 'iproute2 ("ip") is not installed'
    if os.geteuid() != 0:
        return 'creating network namespaces needs root'
    name = 'sk2probe{0}'.format(os.getpid())
    result = _ip('netns', 'add', name, check=False)
    if result.returncode != 0:
        return 'ip netns add failed: {0}'.format(result.stderr.strip())
    _ip('netns', 'del', name, check=False)
    return None


def loss_method():
    """Return 'netem' or 'nft' (how to drop packets here), or None if neither works."""
    name = 'sk2loss{0}'.format(os.getpid())
    if _ip('netns', 'add', name, check=False).returncode != 0:
        return None
    try:
        def works(*argv):
            return subprocess.run(['ip', 'netns', 'exec', name] + list(argv),
                                  capture_output=True).returncode == 0
        if shutil.which('tc') and works('tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'netem',
                                        'loss', '1%'):
            return 'netem'
        if shutil.which('nft') and works('nft', 'add', 'table', 'inet', 'probe'):
            return 'nft'
        return None
    finally:
        _ip('netns', 'del', name, check=False)


class Lines(object):
    """Collects a process's output lines on a thread; wait for one with a deadline."""

    def __init__(self, process):
        """Start reading *process*.stdout (text mode)."""
        self.lines = []
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process.stdout,),
                                        daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in iter(stream.readline, ''):
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text, timeout):
        """Return the first new line containing *text*; fail after *timeout* s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, remaining))
            except queue.Empty:
                line = ''
            if line is None or (line == '' and remaining <= 0):
                raise AssertionError('no line with {0!r} within {1} s; output:\n{2}'.format(
                    text, timeout, ''.join(self.lines[-40:])))
            self.lines.append(line)
            if text in line:
                return line

    def text(self):
        """Everything read so far."""
        return ''.join(self.lines)


class Lan(object):
    """Network namespaces on one bridge; see the module docstring."""

    def __init__(self, hosts=2):
        """Plan *hosts* hosts; nothing is created until ``__enter__``."""
        self.prefix = 'sk2t{0}'.format(os.getpid() % 100000)
        self.subnet = 18 + (os.getpid() % 200)
        self.switch = self.prefix + '-sw'
        self.hosts = ['{0}-h{1}'.format(self.prefix, i + 1) for i in range(hosts)]
        self.addresses = {h: '198.18.{0}.{1}'.format(self.subnet, i + 1)
                          for i, h in enumerate(self.hosts)}
        self._processes = []
        self._created = []

    def __enter__(self):
        """Create the namespaces, the bridge and the links."""
        try:
            _ip('netns', 'add', self.switch)
            self._created.append(self.switch)
            self.run(self.switch, 'ip', 'link', 'add', 'br0', 'type', 'bridge')
            self.run(self.switch, 'ip', 'link', 'set', 'br0', 'up')
            for index, host in enumerate(self.hosts):
                _ip('netns', 'add', host)
                self._created.append(host)
                port = 'p{0}'.format(index + 1)
                _ip('link', 'add', 'eth0', 'netns', host, 'type', 'veth', 'peer', 'name',
                    port, 'netns', self.switch)
                self.run(self.switch, 'ip', 'link', 'set', port, 'master', 'br0')
                self.run(self.switch, 'ip', 'link', 'set', port, 'up')
                self.run(host, 'ip', 'addr', 'add', self.addresses[host] + '/24', 'dev',
                         'eth0')
                self.run(host, 'ip', 'link', 'set', 'eth0', 'up')
                self.run(host, 'ip', 'link', 'set', 'lo', 'up')
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, host, *argv):
        """Run a command in *host* to completion; raise on failure."""
        return subprocess.run(['ip', 'netns', 'exec', host] + list(argv), check=True,
                              capture_output=True, text=True)

    def popen(self, host, argv, **kwargs):
        """Start *argv* in *host*; it is killed on exit if still running."""
        process = subprocess.Popen(['ip', 'netns', 'exec', host] + list(argv), **kwargs)
        self._processes.append(process)
        return process

    def link(self, host, up):
        """Bring *host*'s link to the switch up or down (from the switch side)."""
        port = 'p{0}'.format(self.hosts.index(host) + 1)
        self.run(self.switch, 'ip', 'link', 'set', port, 'up' if up else 'down')

    def shape(self, host, *qdisc):
        """Replace the root qdisc of *host*'s link with *qdisc* (e.g. tbf and its options)."""
        self.run(host, 'tc', 'qdisc', 'replace', 'dev', 'eth0', 'root', *qdisc)

    def drop_packets(self, host, percent, method):
        """Drop *percent* % of the packets *host* sends, with netem or nftables."""
        if method == 'netem':
            self.shape(host, 'netem', 'loss', '{0}%'.format(percent))
            return
        self.run(host, 'nft', 'add', 'table', 'inet', 'sk2loss')
        self.run(host, 'nft', 'add chain inet sk2loss out '
                 '{ type filter hook output priority 0; }')
        self.run(host, 'nft', 'add', 'rule', 'inet', 'sk2loss', 'out', 'numgen', 'random',
                 'mod', '100', 'lt', str(percent), 'drop')

    def stop(self, process, sig=signal.SIGINT, timeout=15.0):
        """Stop *process* with *sig*, killing it after *timeout* s; return its exit code."""
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __exit__(self, exc_type, exc_value, traceback):
        """Stop every process, then delete every namespace (their links go with them)."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
        deadline = time.monotonic() + 10
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self._created):
            _ip('netns', 'del', name, check=False)
        self._created = []


# --- the clock offset across hosts: a server clock off by a known amount -----------------

#: A server whose clock (and so every frame stamp) is argv[2] ns ahead of this machine's;
#: MockKinect frames, or the recording argv[3]. Prints 'serving <control endpoint>'.
CLOCK_SERVER = """
import signal, sys, asyncio
from streamkinect2 import MockKinect, Server
from streamkinect2.common import EndpointType
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    kinect = (MockKinect.from_recording(sys.argv[3], streams=['depth']) if len(sys.argv) > 3
              else MockKinect(streams=['depth']))
    with kinect, Server(
            address=sys.argv[1], announce=False, clock_offset_ns=int(sys.argv[2]),
            streams=['depth']) as server:
        server.add_kinect(kinect)
        print('serving', server.endpoints[EndpointType.control], flush=True)
        await asyncio.wait_for(stop.wait(), 600)
asyncio.run(main())
"""

#: A client of argv[1] for argv[3] s that knows the server's clock is argv[2] ns ahead:
#: prints 'RESULT {json}' with every frame's corrected-stamp error (ns), the estimate's
#: error once a second, the time from connect() to the first estimate, the clock, and
#: whether it is still connected.
CLOCK_CLIENT = """
import asyncio, json, statistics, sys, time
from streamkinect2.client import Client
endpoint, offset, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
async def main():
    client = Client(endpoint)
    client.follow_endpoints = True  # through the relay: the control connection only
    errors, uncorrected, snapshots = [], [0], []
    Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                 client, weak=False)
    def frame(c, depth_frame, kinect_id):
        local = c.to_local_ns(depth_frame.timestamp_ns)
        if local is None:
            uncorrected[0] += 1
        else:
            errors.append(local - (depth_frame.timestamp_ns - offset))
    Client.on_depth_frame.connect(frame, client, weak=False)
    started = time.monotonic()
    client.connect()
    first = None
    # The first estimate: looked for every 5 ms; its sample's arrival time is the figure.
    while first is None and time.monotonic() - started < duration:
        await asyncio.sleep(0.005)
        estimate = client.clock.estimate
        if estimate is not None:
            first = estimate.at - started
    while time.monotonic() - started < duration:
        await asyncio.sleep(1.0)
        clock = client.clock.as_dict()
        if clock['offset_ns'] is not None:
            snapshots.append({'error_ns': offset - clock['offset_ns'],
                              'uncertainty_ns': clock['uncertainty_ns'],
                              'round_trip_ns': clock['round_trip_ns']})
    clock = client.clock.as_dict()
    connected = client.is_connected
    client.disconnect()
    print('RESULT', json.dumps({
        'frames': len(errors), 'uncorrected': uncorrected[0],
        'min_ns': min(errors, default=None), 'max_ns': max(errors, default=None),
        'median_ns': statistics.median(errors) if errors else None, 'errors_ns': errors,
        'first_estimate_s': first, 'snapshots': snapshots, 'clock': clock,
        'connected': connected}), flush=True)
asyncio.run(main())
"""

#: Listens on 127.0.0.1 (prints 'relaying <port>'), forwards each connection to argv[2],
#: each chunk argv[3] s later on the way there and argv[4] s later on the way back.
RELAY = """
import queue, socket, sys, threading, time
listen, target, delays = sys.argv[1], sys.argv[2], (float(sys.argv[3]), float(sys.argv[4]))
host, port = target.rsplit(':', 1)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(('127.0.0.1', 0))
server.listen(8)
print('relaying', server.getsockname()[1], flush=True)
def pump(source, sink, delay):
    # Each chunk goes on delay seconds after it came, in order.
    chunks = queue.Queue()
    def write():
        while True:
            due, data = chunks.get()
            if data is None:
                sink.close()
                return
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                sink.sendall(data)
            except OSError:
                return
    threading.Thread(target=write, daemon=True).start()
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b''
        chunks.put((time.monotonic() + delay, data or None))
        if not data:
            return
while True:
    conn, _ = server.accept()
    upstream = socket.create_connection((host, int(port)))
    for sock in (conn, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=pump, args=(conn, upstream, delays[0]), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, conn, delays[1]), daemon=True).start()
"""


def _python(script, *args):
    return [sys.executable, '-c', script] + [str(a) for a in args]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED='1')


def start_clock_server(lan, host, offset_ns, *recording):
    """Start a server in *host*, its clock *offset_ns* ahead; return (process, endpoint).

    It serves MockKinect frames, or those of the recording file given as *recording*.
    """
    process = lan.popen(host, _python(CLOCK_SERVER, lan.addresses[host], offset_ns,
                                      *recording),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env=_env())
    endpoint = Lines(process).wait_for('serving ', 30).split()[1]
    return process, endpoint


def measure_clock(lan, host, endpoint, offset_ns, duration=8):
    """Run the client in *host* for *duration* s at *endpoint*; return its figures.

    *offset_ns* is how far the server's clock is ahead. The figures: ``frames`` (with a
    corrected stamp), ``uncorrected`` (before the first estimate), ``errors_ns`` (each
    corrected stamp less the truth) with its ``min_ns``, ``median_ns``, ``max_ns``;
    ``first_estimate_s`` (connect() to the first estimate's sample), ``snapshots`` (the
    estimate's error, uncertainty and round trip once a second) and ``clock`` (the
    client's ``clock.as_dict()`` at the end), ``connected`` (still, at the end: False if
    the client gave up on the server). Raise AssertionError if the client failed.
    """
    process = lan.popen(host, _python(CLOCK_CLIENT, endpoint, offset_ns, duration),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env=_env())
    out, _ = process.communicate(timeout=duration + 60)
    assert process.returncode == 0, out
    results = [line for line in out.splitlines() if line.startswith('RESULT ')]
    assert results, out
    assert 'Traceback' not in out, out
    return json.loads(results[-1][len('RESULT '):])


def delay_relay(lan, host, endpoint, out_ms, back_ms):
    """Start a relay in *host* to *endpoint*, delaying each way; return (process, endpoint).

    Each chunk of bytes is held *out_ms* on its way to *endpoint*, *back_ms* on its way
    back (a thread's sleep: a few hundred us more at times). Stop it with ``lan.stop``.
    """
    process = lan.popen(host, _python(RELAY, '127.0.0.1', endpoint.split('//')[1],
                                      out_ms / 1000.0, back_ms / 1000.0),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env=_env())
    port = Lines(process).wait_for('relaying ', 10).split()[1]
    return process, 'tcp://127.0.0.1:{0}'.format(port)
