"""ServerBrowser against a hostile mDNS peer: crafted packets from a real UDP socket.

The peer builds its packets with zeroconf's own record classes and multicasts them to
224.0.0.251:5353 on the loopback interface, which is exactly what the browser's Zeroconf
(bound to 127.0.0.1) receives from any responder. Each test runs on a thread of its own
inside a network namespace of its own (when this process may make one: root), so floods
of bogus announcements reach no other Zeroconf on this machine; otherwise it falls back
to the shared loopback.
"""
import asyncio
import ctypes
import fcntl
import os
import socket
import struct
import threading
import time

from conftest import LOOPBACK, wait_until
import psutil
from streamkinect2.common import EndpointType, ZC_SERVICE_TYPE
from streamkinect2.server import Server, ServerBrowser
from tornado.ioloop import IOLoop
from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText
from zeroconf.const import (_CLASS_IN, _CLASS_UNIQUE, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_A,
                            _TYPE_PTR, _TYPE_SRV, _TYPE_TXT)
import zmq

MDNS_GROUP = ('224.0.0.251', 5353)
#: The ZeroMQ context of the test running in a private namespace.
CONTEXT = []
CLONE_NEWNET = 0x40000000


# --- a loopback of our own ------------------------------------------------------------

def _private_loopback():
    """Move this thread into a new network namespace with ``lo`` up; False if we cannot."""
    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack('16sh', b'lo', 0)
        flags = struct.unpack('16sh', fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack('16sh', b'lo', flags | iff_up))
    return True


def in_private_namespace(func, timeout=120.0):
    """Call *func* on a thread of its own, on a private loopback if we can; return its value.

    Network namespaces belong to threads: the thread that unshares (and every thread it
    starts, Zeroconf's and ZeroMQ's included) sees a loopback nobody else on this machine
    shares. So the servers here get a ZeroMQ context made in there, and the process-wide
    one is made out here first: its I/O threads must stay on the real loopback.
    """
    outcome = {}
    zmq.Context.instance()

    def run():
        try:
            _private_loopback()
            CONTEXT.append(zmq.Context())
            try:
                outcome['value'] = func()
            finally:
                CONTEXT.pop().term()
        except BaseException as err:  # handed back to the test's thread
            outcome['error'] = err
    thread = threading.Thread(target=run, name='hostile-mdns-test')
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), 'test thread still running'
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


def run_isolated(main, timeout=90.0):
    """Run the coroutine function *main* with asyncio.run, on a private loopback if we can."""
    return in_private_namespace(lambda: asyncio.run(asyncio.wait_for(main(), timeout)),
                                timeout + 30)


# --- the hostile peer -----------------------------------------------------------------

class Peer(object):
    """Send crafted mDNS responses to the group, out of the loopback interface only."""

    def __init__(self):
        """Open the socket (bound to 127.0.0.1, multicast interface 127.0.0.1)."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             socket.inet_aton(LOOPBACK))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        self.sent = 0

    def close(self):
        """Close the socket."""
        self.sock.close()

    def send(self, *records):
        """Send *records* as the answers of one response (split if it must be)."""
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for record in records:
            out.add_answer_at_time(record, 0)
        for packet in out.packets():
            self.sock.sendto(packet, MDNS_GROUP)
            self.sent += 1

    @staticmethod
    def ptr(alias, ttl=4500, service_type=ZC_SERVICE_TYPE):
        """Return a PTR ``service_type -> alias``."""
        return DNSPointer(service_type, _TYPE_PTR, _CLASS_IN, ttl, alias)

    @staticmethod
    def service(name, port, host, address='127.0.0.1', text=b'\x09version=1', ttl=120):
        """Return the SRV, TXT and A records of a service *name* on *host*."""
        return [
            DNSService(name, _TYPE_SRV, _CLASS_IN | _CLASS_UNIQUE, ttl, 0, 0, port, host),
            DNSText(name, _TYPE_TXT, _CLASS_IN | _CLASS_UNIQUE, 4500, text),
            DNSAddress(host, _TYPE_A, _CLASS_IN | _CLASS_UNIQUE, ttl,
                       socket.inet_aton(address)),
        ]

    def announce(self, instance, port, host=None, address='127.0.0.1', text=b'\x09version=1'):
        """Announce a complete (resolvable) server *instance*; return its full name."""
        name = '{0}.{1}'.format(instance, ZC_SERVICE_TYPE)
        host = host or 'h{0}.local.'.format(abs(hash(instance)))
        self.send(self.ptr(name), *self.service(name, port, host, address, text))
        return name

    async def paced(self, batches):
        """Send each batch of records, yielding to the loop between them."""
        for records in batches:
            self.send(*records)
            await asyncio.sleep(0.002)


def mdns_sockets():
    """Return how many UDP sockets bound to port 5353 this process holds (any namespace)."""
    count = 0
    for fd in os.listdir('/proc/self/fd'):
        try:
            if not os.readlink('/proc/self/fd/' + fd).startswith('socket:'):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:  # family, type detected
                if (sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
                        and sock.getsockname()[1] == MDNS_GROUP[1]):
                    count += 1
        except OSError:  # gone meanwhile, or not an IPv4 socket
            continue
    return count


class Recorder(object):
    """Connect to a browser's signals and record what it emits, and on which thread."""

    def __init__(self, browser):
        """Connect (strongly) to *browser*'s signals."""
        self.added, self.removed, self.threads = [], [], set()
        ServerBrowser.on_add_server.connect(self._add, browser, weak=False)
        ServerBrowser.on_remove_server.connect(self._remove, browser, weak=False)

    def _add(self, browser, server_info):
        self.added.append(server_info)
        self.threads.add(threading.get_ident())

    def _remove(self, browser, server_info):
        self.removed.append(server_info)
        self.threads.add(threading.get_ident())

    def named(self, name):
        """Return the ServerInfos added under *name*."""
        return [i for i in self.added if i.name == name]


def _real_server(tag):
    return Server(address=LOOPBACK, name='Real {0} {1}'.format(tag, os.getpid()),
                  zmq_ctx=CONTEXT[-1])


async def _find_real_server(recorder, server, timeout=10):
    await wait_until(lambda: recorder.named(server.name), timeout, 'the real server')
    assert recorder.named(server.name)[0].endpoint == server.endpoints[EndpointType.control]


# --- the tests -----------------------------------------------------------------------

def test_a_ptr_to_another_service_type_does_not_stop_discovery():
    async def main():
        peer = Peer()
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                recorder = Recorder(browser)
                # A _kinect2._tcp PTR naming an instance of another service type.
                peer.send(peer.ptr('evil._http._tcp.local.'))
                peer.send(peer.ptr('_kinect2._tcp.local.'))  # the bare type as instance
                peer.send(peer.ptr('x.local.'))
                with _real_server('after bad PTR') as server:
                    await _find_real_server(recorder, server)
                assert not [i for i in recorder.added if 'evil' in i.name]
                assert recorder.threads == {threading.get_ident()}
        finally:
            peer.close()
    run_isolated(main)


def test_names_that_never_resolve_do_not_delay_a_real_server():
    async def main():
        peer = Peer()
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                recorder = Recorder(browser)
                for index in range(8):
                    peer.send(peer.ptr('ghost {0}.{1}'.format(index, ZC_SERVICE_TYPE)))
                # With one 3 s resolution at a time this took 8 x 3 s.
                with _real_server('after ghosts') as server:
                    await _find_real_server(recorder, server, timeout=8)
        finally:
            peer.close()
    run_isolated(main)


def test_close_returns_promptly_and_releases_everything():
    async def main():
        peer = Peer()
        process = psutil.Process()
        threads_before = set(threading.enumerate())
        fds_before = process.num_fds()
        try:
            browser = ServerBrowser(address=LOOPBACK)
            for index in range(8):
                peer.send(peer.ptr('ghost {0}.{1}'.format(index, ZC_SERVICE_TYPE)))
            await asyncio.sleep(0.3)  # let the resolutions start (and hang)
            started = time.monotonic()
            browser.close()
            took = time.monotonic() - started
            browser.close()  # idempotent
            # Generous against a loaded machine; the old browser blocked 10 s here.
            assert took < 2.0, 'close() blocked its caller {0:.1f} s'.format(took)
            assert set(threading.enumerate()) == threads_before
            # The sockets go with the next loop iterations.
            await wait_until(lambda: process.num_fds() <= fds_before, 2, 'sockets closed')
        finally:
            peer.close()
    run_isolated(main)


def test_a_flood_of_names_that_never_resolve_stays_bounded(caplog):
    async def main():
        peer = Peer()
        process = psutil.Process()
        tasks_before = len(asyncio.all_tasks())
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                recorder = Recorder(browser)
                await asyncio.sleep(0.1)
                rss_before = process.memory_info().rss
                await peer.paced(
                    [peer.ptr('flood {0}.{1}'.format(i, ZC_SERVICE_TYPE))
                     for i in range(j, j + 25)] for j in range(0, 5000, 25))
                pending = len(asyncio.all_tasks()) - tasks_before
                await wait_until(lambda: browser.ignored >= 4000, 10, 'the flood to arrive')
                with _real_server('after flood') as server:
                    await _find_real_server(recorder, server, timeout=10)
                    pending = max(pending, len(asyncio.all_tasks()) - tasks_before)
                grown = (process.memory_info().rss - rss_before) / 1e6
                print('flood: {0} names in {1} packets, {2} ignored, RSS +{3:.1f} MB, at most '
                      '{4} tasks pending'.format(5000, peer.sent, browser.ignored, grown, pending))
                # Resolutions in flight are bounded (plus zeroconf's and the server's own).
                assert pending <= ServerBrowser.max_resolving + 8, pending
                assert grown < 40, 'RSS grew {0:.1f} MB'.format(grown)
                assert [i.name for i in browser.servers] == [server.name]
        finally:
            peer.close()
    run_isolated(main)
    warnings = [r for r in caplog.records
                if r.name == 'streamkinect2.discovery' and r.levelname == 'WARNING']
    assert 1 <= len(warnings) <= 2, 'the flood is summarised, not logged name by name'


def test_at_most_max_servers_are_kept_and_room_is_refilled():
    async def main():
        peer = Peer()
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                recorder = Recorder(browser)
                names = []
                for index in range(300):
                    names.append(peer.announce('bogus {0}'.format(index), 1000 + index))
                    if index % 10 == 0:
                        await asyncio.sleep(0.002)
                limit = ServerBrowser.max_servers
                await wait_until(lambda: len(recorder.added) >= limit, 10, 'a full table')
                # A witness without the limit tells when the real server has announced.
                witness = ServerBrowser(address=LOOPBACK)
                witness.max_servers = 1000
                seen = Recorder(witness)
                with witness, _real_server('behind a full table') as server:
                    await wait_until(lambda: seen.named(server.name), 10, 'the witness')
                    await asyncio.sleep(0.1)  # the same packets reached the browser
                    assert len(browser.servers) == limit
                    assert len(recorder.added) == limit
                    assert not recorder.named(server.name)
                    # The bogus ones say goodbye: the real one takes their place.
                    for start in range(0, len(names), 20):
                        peer.send(*[peer.ptr(n, ttl=0) for n in names[start:start + 20]])
                        await asyncio.sleep(0.002)
                    await _find_real_server(recorder, server, timeout=10)
                    await wait_until(lambda: [i.name for i in browser.servers] == [server.name],
                                     10, 'only the real server')
                    assert len(recorder.removed) == len(recorder.added) - 1
        finally:
            peer.close()
    run_isolated(main)


def test_hostile_records_never_become_servers():
    async def main():
        peer = Peer()
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                recorder = Recorder(browser)
                bad = ['new\nline', 'esc \x1b[31mred', 'bidi \u202eevil', 'nul \x00 byte',
                       'del \x7f']
                for index, instance in enumerate(bad):
                    peer.announce(instance, 2000 + index)
                for index, address in enumerate(['224.0.0.1', '0.0.0.0', '255.255.255.255',
                                                 '240.1.2.3', '0.1.2.3']):
                    peer.announce('odd address {0}'.format(index), 2100 + index,
                                  address=address)
                peer.announce('port zero', 0)
                # A huge TXT (we never read it) does not stop a server being found.
                peer.announce('huge txt', 2200, text=b'\xffx' + b'y' * 254 + (
                    b'\xff' + b'z' * 255) * 30)
                peer.announce('sane', 2201)
                await wait_until(lambda: recorder.named('sane') and recorder.named('huge txt'),
                                 10, 'the sane servers')
                await asyncio.sleep(0.3)
                assert sorted(i.name for i in browser.servers) == ['huge txt', 'sane']
                assert sorted(i.name for i in recorder.added) == ['huge txt', 'sane']
        finally:
            peer.close()
    run_isolated(main)


def test_a_server_that_moves_is_followed_and_a_goodbye_removes_it():
    async def main():
        peer = Peer()
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                recorder = Recorder(browser)
                name = peer.announce('mover', 3000, host='mover.local.')
                await wait_until(lambda: recorder.added, 10, 'the announcement')
                assert recorder.added == [('mover', 'tcp://127.0.0.1:3000')]
                # New port (SRV with the cache-flush bit).
                srv, _, _ = peer.service(name, 3001, 'mover.local.')
                peer.send(srv)
                await wait_until(lambda: len(recorder.added) == 2, 10, 'the new port')
                assert recorder.added[1] == ('mover', 'tcp://127.0.0.1:3001')
                assert recorder.removed == [('mover', 'tcp://127.0.0.1:3000')]
                # New address (A with the cache-flush bit).
                _, _, addr = peer.service(name, 3001, 'mover.local.', address='127.0.0.2')
                peer.send(addr)
                await wait_until(lambda: len(recorder.added) == 3, 10, 'the new address')
                assert recorder.added[2] == ('mover', 'tcp://127.0.0.2:3001')
                assert browser.servers == [recorder.added[2]]
                # Goodbye: the PTR with TTL 0.
                peer.send(peer.ptr(name, ttl=0))
                await wait_until(lambda: len(recorder.removed) == 3, 10, 'the goodbye')
                assert recorder.removed[2] == recorder.added[2]
                assert browser.servers == []
                assert recorder.threads == {threading.get_ident()}
        finally:
            peer.close()
    run_isolated(main)


def test_a_raising_receiver_stops_neither_the_others_nor_discovery():
    async def main():
        peer = Peer()
        try:
            with ServerBrowser(address=LOOPBACK) as browser:
                def bad(browser, server_info):
                    raise RuntimeError('receiver bug')
                ServerBrowser.on_add_server.connect(bad, browser, weak=False)
                recorder = Recorder(browser)
                peer.announce('first', 4000)
                await wait_until(lambda: recorder.named('first'), 10, 'first')
                peer.announce('second', 4001)
                await wait_until(lambda: recorder.named('second'), 10, 'second')
        finally:
            peer.close()
    run_isolated(main)


def test_built_before_its_loop_runs_and_closed_after_it_stops():
    """The 2014 pattern: make the objects, run the loop, close them after it stops."""
    def main():
        io_loop = IOLoop(make_current=False)
        try:
            browser = ServerBrowser(io_loop=io_loop, address=LOOPBACK)
            seen = []

            def on_add(browser, server_info):
                seen.append((server_info, threading.get_ident()))
            ServerBrowser.on_add_server.connect(on_add, browser)

            async def find():
                with _real_server('late loop') as server:
                    await wait_until(lambda: [s for s, _ in seen if s.name == server.name],
                                     10, 'the server')
            io_loop.run_sync(find, timeout=30)
            assert {ident for _, ident in seen} == {threading.get_ident()}
            assert mdns_sockets() == 2  # the browser's (listen and respond)
            browser.close()  # the loop is not running now
            assert browser.servers == []
            assert mdns_sockets() == 0  # closed, though the loop is not running
        finally:
            io_loop.close(all_fds=False)
    in_private_namespace(main)


def test_built_and_closed_from_a_thread_that_is_not_the_loops():
    async def main():
        loop_thread_ready = threading.Event()
        holder = {}

        def run_loop():
            asyncio.set_event_loop(asyncio.new_event_loop())
            holder['io_loop'] = IOLoop.current()
            holder['ident'] = threading.get_ident()
            holder['io_loop'].add_callback(loop_thread_ready.set)
            holder['io_loop'].start()
            holder['io_loop'].close(all_fds=False)
        loop_thread = threading.Thread(target=run_loop, name='other-ioloop')
        loop_thread.start()
        try:
            assert loop_thread_ready.wait(10)
            browser = ServerBrowser(io_loop=holder['io_loop'], address=LOOPBACK)
            seen = []
            ServerBrowser.on_add_server.connect(
                lambda b, server_info: seen.append(threading.get_ident()), browser, weak=False)
            peer = Peer()
            try:  # the browser starts on its loop, a moment later: announce until heard
                deadline = time.monotonic() + 10
                while not seen and time.monotonic() < deadline:
                    peer.announce('cross thread', 5000, text=str(time.monotonic()).encode())
                    await asyncio.sleep(0.2)
                assert seen, 'the server was not found'
            finally:
                peer.close()
            assert set(seen) == {holder['ident']}
            browser.close()
            assert browser.servers == []
        finally:
            holder['io_loop'].add_callback(holder['io_loop'].stop)
            loop_thread.join(10)
    run_isolated(main)
