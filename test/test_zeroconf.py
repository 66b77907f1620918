"""Discovery over real zeroconf, kept on the loopback interface."""
import threading

from conftest import LOOPBACK, run_async, wait_until
import pytest
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.server import Server, ServerBrowser, ServerInfo


def test_browser_sees_servers_come_and_go_on_the_ioloop_thread():
    async def main():
        added, removed, threads = [], [], set()

        def on_add(browser, server_info):
            added.append(server_info)
            threads.add(threading.get_ident())

        def on_remove(browser, server_info):
            removed.append(server_info)
            threads.add(threading.get_ident())
        with ServerBrowser(address=LOOPBACK) as browser:
            ServerBrowser.on_add_server.connect(on_add, browser)
            ServerBrowser.on_remove_server.connect(on_remove, browser)
            server = Server(address=LOOPBACK, name='Test Kinect2 {0}'.format(id(added)))
            server.start()
            ours = lambda infos: [i for i in infos if i.name == server.name]  # noqa: E731
            await wait_until(lambda: ours(added), 15, 'server announcement')
            info = ours(added)[0]
            assert isinstance(info, ServerInfo) and isinstance(info, tuple)
            assert info == (server.name, server.endpoints[EndpointType.control])
            assert info.endpoint.startswith('tcp://127.0.0.1:')
            assert info in browser.servers
            # The discovered endpoint is one a client can use.
            with Client(info.endpoint) as client:
                await wait_until(lambda: client.server_name == server.name, 10, 'me reply')
            server.stop()
            await wait_until(lambda: ours(removed), 15, 'server removal')
            assert ours(removed)[0] == info
            assert info not in browser.servers
        assert threads == {threading.get_ident()}
    run_async(main())


def test_servers_with_the_same_name_both_get_announced():
    async def main():
        added = []
        with ServerBrowser(address=LOOPBACK) as browser:
            ServerBrowser.on_add_server.connect(
                lambda b, server_info: added.append(server_info), browser, weak=False)
            name = 'Twin {0}'.format(id(added))
            twins = lambda: [i for i in added if i.name.startswith(name)]  # noqa: E731
            with Server(address=LOOPBACK, name=name) as one:
                await wait_until(lambda: len(twins()) >= 1, 15, 'first announcement')
                # Zeroconf probes find the clash and rename the second.
                with Server(address=LOOPBACK, name=name) as two:
                    await wait_until(lambda: len(twins()) >= 2, 15, 'second announcement')
                    assert {i.endpoint for i in twins()} == {
                        one.endpoints[EndpointType.control],
                        two.endpoints[EndpointType.control]}
                    assert len({i.name for i in twins()}) == 2
                    assert two.announced_name != one.announced_name
    run_async(main())


def test_announce_false_keeps_the_server_off_zeroconf():
    async def main():
        with ServerBrowser(address=LOOPBACK) as browser:
            with Server(address=LOOPBACK, announce=False, name='Quiet') as server:
                # A server that is announced, started after, shows the browser works.
                with Server(address=LOOPBACK, name='Loud {0}'.format(id(browser))) as loud:
                    await wait_until(lambda: any(i.name == loud.name
                                                 for i in browser.servers), 15, 'loud')
                assert server.announced_name is None
                assert not any(i.name == 'Quiet' for i in browser.servers)
    run_async(main())


def test_the_browser_runs_on_the_loop_with_no_thread_of_its_own():
    async def main():
        before = set(threading.enumerate())
        with ServerBrowser(address=LOOPBACK) as browser:
            assert set(threading.enumerate()) == before
            with Server(address=LOOPBACK, name='Threadless {0}'.format(id(browser))) as server:
                await wait_until(lambda: any(i.name == server.name for i in browser.servers),
                                 15, 'the server')
        assert set(threading.enumerate()) == before
    run_async(main())


def test_the_reference_api_keeps_its_places():
    import streamkinect2
    from streamkinect2 import discovery
    assert ServerBrowser is discovery.ServerBrowser is streamkinect2.ServerBrowser
    assert ServerInfo is discovery.ServerInfo is streamkinect2.ServerInfo
    assert ServerInfo('n', 'tcp://127.0.0.1:1') == ('n', 'tcp://127.0.0.1:1')
    with pytest.raises(ValueError):
        ServerBrowser(address='not an address')
