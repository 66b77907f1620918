"""ServerConnection: reconnection, the choice of endpoint, failure memory, rediscovery."""
import os
import time

from conftest import LOOPBACK, run_async, wait_until
import pytest
from streamkinect2.common import EndpointType
from streamkinect2.connection import EndpointChooser, ServerConnection
from streamkinect2.device import STREAMS
from streamkinect2.mock import MockKinect
from streamkinect2.server import Server
from test_client_hostile import dead_endpoint, FakeServer


class Seen(object):
    """Records every signal of a connection, with the sender it came with."""

    def __init__(self, connection):
        """Connect to every signal of *connection*."""
        self.events = []
        self.frames = []
        self.ir_frames = []
        self.color_frames = []
        self.senders = set()
        for name in ServerConnection.SIGNALS:
            getattr(ServerConnection, name).connect(getattr(self, name), connection)

    def on_connect(self, sender):
        self.senders.add(sender)
        self.events.append(('connect', sender.server_name, sender.endpoint))

    def on_disconnect(self, sender):
        self.senders.add(sender)
        self.events.append(('disconnect', sender.server_name, sender.endpoint))

    def on_add_kinect(self, sender, kinect_id):
        self.senders.add(sender)
        self.events.append(('add', kinect_id))
        sender.enable_depth_frames(kinect_id)

    def on_remove_kinect(self, sender, kinect_id):
        self.senders.add(sender)
        self.events.append(('remove', kinect_id))

    def on_depth_frame(self, sender, depth_frame, kinect_id):
        self.senders.add(sender)
        self.frames.append((kinect_id, depth_frame))

    def on_ir_frame(self, sender, ir_frame, kinect_id):
        self.senders.add(sender)
        self.ir_frames.append((kinect_id, ir_frame))

    def on_color_frame(self, sender, color_frame, kinect_id):
        self.senders.add(sender)
        self.color_frames.append((kinect_id, color_frame))

    def count(self, name):
        return sum(1 for e in self.events if e[0] == name)


# --- the choice of endpoint ---------------------------------------------------------

def test_chooser_tries_every_untried_endpoint_before_one_that_failed():
    a, b, c = 'tcp://127.0.0.1:1', 'tcp://127.0.0.1:2', 'tcp://127.0.0.1:3'
    chooser = EndpointChooser()
    assert chooser.choose([]) is None
    assert chooser.choose([a, b, c]) == a
    chooser.failed(a, now=1.0)
    assert chooser.choose([a, b, c]) == b
    chooser.failed(b, now=3.0)
    # However long ago a failed, c has not been tried yet (issue 8.6).
    assert chooser.choose([a, b, c]) == c
    chooser.failed(c, now=1001.0)
    # All failed: the one that failed longest ago.
    assert chooser.choose([a, b, c]) == a
    assert chooser.last_failure(a) == 1.0
    chooser.failed(a, now=1003.0)
    assert chooser.choose([a, b, c]) == b
    # A success, or a server announcing itself again, clears the memory.
    chooser.succeeded(c)
    assert chooser.choose([a, b, c]) == c
    chooser.failed(c, now=1006.0)
    chooser.forget(a)
    assert chooser.choose([a, b, c]) == a
    # Only candidates are remembered: the memory is bounded by what is offered.
    chooser.failed(a, now=1008.0)
    assert chooser.choose([b]) == b
    assert chooser.last_failure(a) is None and chooser.last_failure(c) is None


# --- failure memory and giving up ---------------------------------------------------

def test_dead_endpoints_are_not_retried_before_a_live_one():
    """Issue 8.6: two dead servers must not keep the live one from being tried."""
    async def main():
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            live = server.endpoints[EndpointType.control]
            endpoints = [dead_endpoint(), dead_endpoint(), live]
            connection = ServerConnection(endpoints, response_timeout=0.3, retry_period=0.1)
            seen = Seen(connection)
            connection.start()
            try:
                await wait_until(lambda: seen.frames, 10, 'frames from the live server')
                assert seen.events[0] == ('connect', server.name, live)
                assert connection.attempts == 3  # each dead one once, then the live one
            finally:
                connection.stop()
    run_async(main())


def _silent(server, frames):
    return None


BAD_SERVERS = {
    'answers error': lambda server, frames: [b'\x00', b'{"reason": "no"}'],
    'answers garbage': lambda server, frames: [b'\x04', b'\xff\xfe'],
    'never answers': _silent,
}


@pytest.mark.parametrize('kind', sorted(BAD_SERVERS))
def test_a_server_that_never_identifies_is_given_up(kind):
    """Issue 8.7: a server that never identifies must not hold the connection."""
    async def main():
        with FakeServer(BAD_SERVERS[kind]) as bad, MockKinect() as kinect, \
                Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            live = server.endpoints[EndpointType.control]
            # A response timeout longer than the test: only giving up can get past it.
            connection = ServerConnection([bad.endpoint, live], response_timeout=60,
                                          retry_period=0.1, identify_timeout=0.5)
            seen = Seen(connection)
            connection.start()
            try:
                await wait_until(lambda: seen.frames, 10, 'frames from the live server')
                assert seen.events[0] == ('connect', server.name, live)
                assert bad.requests == 1
            finally:
                connection.stop()
    run_async(main())


def test_a_failing_server_alone_is_retried_at_the_retry_period():
    async def main():
        with FakeServer(BAD_SERVERS['answers error']) as bad:
            connection = ServerConnection(bad.endpoint, response_timeout=1, retry_period=0.2)
            connection.start()
            try:
                await wait_until(lambda: bad.requests >= 3, 5, 'three attempts')
                started, requests = time.monotonic(), bad.requests
                await wait_until(lambda: time.monotonic() - started > 1.0, 2, 'a second')
                assert bad.requests - requests < 15  # not hammered in a tight loop
                assert not connection.is_connected
            finally:
                connection.stop()
    run_async(main())


# --- forwarding, reconnection, rediscovery --------------------------------------------

def test_signals_are_forwarded_and_the_stream_resumes_after_a_restart():
    async def main():
        with MockKinect() as kinect:
            server = Server(address=LOOPBACK, announce=False)
            server.add_kinect(kinect)
            server.start()
            endpoint = server.endpoints[EndpointType.control]
            connection = ServerConnection(endpoint, response_timeout=0.5, retry_period=0.1)
            seen = Seen(connection)

            def explode(sender, **kwargs):
                raise RuntimeError('a receiver bug')
            ServerConnection.on_depth_frame.connect(explode, connection, weak=False)
            connection.start()
            try:
                await wait_until(lambda: len(seen.frames) >= 5, 10, 'frames')
                assert seen.senders == {connection}
                assert connection.is_connected and connection.server_name == server.name
                assert connection.kinect_ids == [kinect.unique_kinect_id]
                assert connection.stats[kinect.unique_kinect_id].received >= 5
                server.stop()
                await wait_until(lambda: seen.count('disconnect'), 5, 'disconnect')
                assert ('remove', kinect.unique_kinect_id) in seen.events
                assert not connection.is_connected and connection.stats == {}
                server = Server(address=LOOPBACK, announce=False,
                                control_port=int(endpoint.rsplit(':', 1)[1]))
                server.add_kinect(kinect)
                server.start()
                count = len(seen.frames)
                await wait_until(lambda: len(seen.frames) > count + 5, 10, 'frames again')
                assert seen.count('connect') == 2 and seen.count('add') == 2
            finally:
                connection.stop()
                server.stop()
            assert not connection.is_connected
    run_async(main())


def test_a_server_is_found_by_name_and_found_again_after_a_restart():
    async def main():
        name = 'connection test {0} {1}'.format(os.getpid(), time.monotonic_ns())
        with MockKinect() as kinect:
            connection = ServerConnection(server_name=name, discovery_address=LOOPBACK,
                                          response_timeout=0.5, retry_period=0.1)
            seen = Seen(connection)
            connection.start()
            server = Server(address=LOOPBACK, name=name)
            try:
                server.add_kinect(kinect)
                server.start()
                await wait_until(lambda: seen.frames, 20, 'frames from the named server')
                first = server.endpoints[EndpointType.control]
                assert seen.events[0] == ('connect', name, first)
                server.stop()
                await wait_until(lambda: seen.count('disconnect'), 10, 'disconnect')
                server = Server(address=LOOPBACK, name=name)
                server.add_kinect(kinect)
                server.start()
                count = len(seen.frames)
                await wait_until(lambda: len(seen.frames) > count, 20, 'frames again')
                assert seen.events[-2:] == [
                    ('connect', name, server.endpoints[EndpointType.control]),
                    ('add', kinect.unique_kinect_id)]
            finally:
                connection.stop()
                if server.is_running:
                    server.stop()
    run_async(main())


def test_ir_and_colour_are_forwarded_and_enabled_through_the_connection():
    async def main():
        with FakeServer(streams=STREAMS) as fake:
            fake.streaming.set()
            connection = ServerConnection(fake.endpoint, response_timeout=0.5,
                                          retry_period=0.1)
            with pytest.raises(ValueError, match='not connected'):
                connection.enable_color_frames('dev')
            assert connection.stream_stats('dev', 'color') is None
            seen = Seen(connection)  # enables depth on every device

            def enable_more(sender, kinect_id):
                sender.enable_ir_frames(kinect_id)
                sender.enable_color_frames(kinect_id)
            ServerConnection.on_add_kinect.connect(enable_more, connection, weak=False)
            connection.start()
            try:
                await wait_until(lambda: len(seen.ir_frames) >= 3 and
                                 len(seen.color_frames) >= 3, 10, 'IR and colour frames')
                assert seen.senders == {connection}
                assert connection.stream_stats('dev', 'ir').received >= 3
                assert connection.stream_stats('dev', 'color').invalid == 0
                assert all(f.pixels is None for _, f in seen.color_frames)
                connection.disable_color_frames('dev')
                connection.disable_ir_frames('dev')
                assert not connection.client.is_enabled('dev', 'color')
                assert not connection.client.is_enabled('dev', 'ir')
                assert connection.client.is_enabled('dev', 'depth')
            finally:
                connection.stop()
    run_async(main())
