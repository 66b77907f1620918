"""CURVE security: admitted clients stream; anyone else gets nothing."""
import asyncio
import os
import stat

from conftest import LOOPBACK, run_async, wait_until
import numpy as np
import pytest
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.mock import MockKinect
from streamkinect2.security import (CurveClientConfig, CurveServerConfig, load_keypair,
                                    load_public_key)
from streamkinect2.server import Server
from streamkinect2.tools import keygen_main
import zmq
from zmq.asyncio import Context as AsyncContext


@pytest.fixture
def keys(tmp_path):
    for name in ('server', 'good', 'bad'):
        assert keygen_main([str(tmp_path), name]) == 0
    return tmp_path


def test_keygen_writes_usable_certificates(keys):
    public, secret = load_keypair(str(keys / 'server.key_secret'))
    assert len(public) == len(secret) == 40
    assert load_public_key(str(keys / 'server.key')) == public
    assert load_public_key(public.decode()) == public
    assert stat.S_IMODE(os.stat(keys / 'server.key_secret').st_mode) == 0o600
    with pytest.raises(ValueError):
        load_public_key('too short')
    with pytest.raises(ValueError):
        load_keypair(str(keys / 'server.key'))


def _client(endpoint, curve, recorder):
    client = Client(endpoint, curve=curve)
    client.heartbeat_period = 100
    client.response_timeout = 1500
    Client.on_connect.connect(lambda c: recorder.append('connect'), client, weak=False)
    Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                 client, weak=False)
    Client.on_depth_frame.connect(
        lambda c, depth_frame, kinect_id: recorder.append(depth_frame), client, weak=False)
    return client


def test_only_admitted_clients_get_anything(keys):
    async def main():
        curve = CurveServerConfig(str(keys / 'server.key_secret'), [str(keys / 'good.key')])
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False,
                                            curve=curve) as server:
            server.add_kinect(kinect)
            endpoint = server.endpoints[EndpointType.control]
            depth_endpoint = server.device_endpoint(kinect.unique_kinect_id)
            server_key = str(keys / 'server.key')
            good, bad, unkeyed = [], [], []
            clients = [
                _client(endpoint, CurveClientConfig(str(keys / 'good.key_secret'),
                                                    server_key), good),
                _client(endpoint, CurveClientConfig(str(keys / 'bad.key_secret'),
                                                    server_key), bad),
                _client(endpoint, None, unkeyed),
            ]
            for client in clients:
                client.connect()
            # A raw subscriber without keys, straight at the depth endpoint.
            ctx = AsyncContext()
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            sub.setsockopt(zmq.SUBSCRIBE, b'')
            sub.connect(depth_endpoint)
            try:
                await wait_until(lambda: len(good) > 5, 10, 'admitted client frames')
                frame = good[-1]
                assert np.array_equal(frame.array, MockKinect.render_frame(frame.sequence))
                # The others have had as long, and then a response timeout more.
                await wait_until(lambda: not clients[1].is_connected
                                 and not clients[2].is_connected, 5,
                                 'unadmitted clients to time out')
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(sub.recv_multipart(), 0.5)
            finally:
                sub.close(linger=0)
                ctx.term()
            assert bad == [] and unkeyed == []
            assert clients[1].server_name is None and clients[2].kinect_ids == []
            clients[0].disconnect()
    run_async(main())


def test_missing_key_file_is_reported_as_missing(keys):
    missing = keys / 'nobody.key'
    for value in (str(missing), missing, str(keys / 'sub' / 'x.key_secret'), 'server.key'):
        with pytest.raises(FileNotFoundError, match='no such key file: '):
            load_public_key(value)
    with pytest.raises(FileNotFoundError, match='no such key file: .*nobody.key_secret'):
        load_keypair(str(keys / 'nobody.key_secret'))
    with pytest.raises(FileNotFoundError, match='no such key file: .*nobody.key_secret'):
        CurveServerConfig(str(keys / 'nobody.key_secret'), [])
    # Which key it was, among several.
    allowed = [str(keys / 'good.key'), str(missing)]
    with pytest.raises(FileNotFoundError,
                       match='admitted client key 2 of 2: no such key file: .*nobody.key'):
        CurveServerConfig(str(keys / 'server.key_secret'), allowed)
    with pytest.raises(FileNotFoundError, match="server's public key: no such key file: "):
        CurveClientConfig(str(keys / 'good.key_secret'), str(missing))


def test_key_file_without_a_key_says_so(keys):
    (keys / 'empty.key').write_bytes(b'')
    (keys / 'notes.txt').write_text('public key: ask Bob\n')
    (keys / 'short.key').write_text('curve\n    public-key = "short"\n')
    (keys / 'binary.key').write_bytes(bytes(range(256)) * 4)
    for name in ('empty.key', 'notes.txt', 'binary.key'):
        with pytest.raises(ValueError, match='no CURVE key in .*{0}'.format(name)):
            load_public_key(str(keys / name))
        with pytest.raises(ValueError, match='no CURVE key in .*{0}'.format(name)):
            load_keypair(str(keys / name))
    # A public-key line that is no key: refused here, not by ZeroMQ at connect time.
    with pytest.raises(ValueError, match='short.key.*40 Z85 characters'):
        load_public_key(str(keys / 'short.key'))
    with pytest.raises(ValueError, match='holds no secret key.*NAME.key_secret'):
        load_keypair(str(keys / 'server.key'))
    with pytest.raises(IsADirectoryError, match='a directory, not a key file: '):
        load_public_key(str(keys))


def test_malformed_keys_are_refused_with_a_reason(keys):
    public, _ = load_keypair(str(keys / 'good.key_secret'))
    assert load_public_key(public) == public
    with pytest.raises(ValueError, match='neither a CURVE public key .* nor an existing '
                                         'key file'):
        load_public_key('too short')
    for bad in (' ' * 40, '"' * 40, b'\xff' * 40, '#' * 40, 'é' * 40):
        # 40 characters, but not Z85 (or, '#####', beyond 32 bits per group).
        with pytest.raises(ValueError, match='Z85'):
            load_public_key(bad)
    with pytest.raises(TypeError, match='list'):
        CurveServerConfig(str(keys / 'server.key_secret'), str(keys / 'good.key'))
    config = CurveServerConfig(str(keys / 'server.key_secret'), [public])
    assert config.callback('*', public) is True
    assert config.callback('*', b'#' * 40) is False
    assert config.callback('*', b'x') is False


def test_a_forty_character_key_file_name_is_not_taken_for_a_key(tmp_path, keys):
    name = 'k' * (40 - len('.key')) + '.key'  # also 40 Z85 characters
    assert len(name) == 40
    with pytest.raises(FileNotFoundError, match='no such key file: ' + name):
        load_public_key(name)
    with pytest.raises(TypeError, match='a key file is a path'):
        load_keypair(0)  # not file descriptor 0
