"""Test hosts in network namespaces joined by a bridge: a small LAN on this machine.

``with Lan(hosts=2) as lan:`` creates namespaces ``<prefix>-h1``, ``<prefix>-h2``, … and
a bridge namespace ``<prefix>-sw`` holding a Linux bridge; each host gets a veth into the
bridge and an address in 198.18.N.0/24 (the RFC 2544 benchmarking range, never routed
out: the namespaces have no other link). Traffic, mDNS included, stays on that LAN.
Everything is torn down on exit, processes first. Needs root and iproute2.
"""
import os
import queue
import shutil
import signal
import subprocess
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
