"""Wire formats: control messages and depth frame headers."""
import json

import pytest

from streamkinect2.common import ProtocolError
from streamkinect2.protocol import (decode_control, encode_control, FRAME_HEADER_SIZE,
                                    FrameHeader, MAX_CONTROL_BYTES, MessageType,
                                    pack_frame_header, unpack_frame_header,
                                    validate_me_payload)


def test_type_bytes_match_the_2014_protocol():
    assert [t.value for t in MessageType] == [0, 1, 2, 3, 4]
    assert [t.name for t in MessageType] == ['error', 'ping', 'pong', 'who', 'me']


def test_control_round_trip():
    frames = encode_control(MessageType.me, {'version': 1, 'name': 'ü'})
    assert frames[0] == b'\x04'
    assert json.loads(frames[1].decode('utf8')) == {'version': 1, 'name': 'ü'}
    assert decode_control(frames) == (MessageType.me, {'version': 1, 'name': 'ü'})
    assert encode_control(MessageType.ping) == [b'\x01']
    assert decode_control([b'\x01']) == (MessageType.ping, None)


@pytest.mark.parametrize('frames, reason', [
    ([], 'frames'),
    ([b'\x01', b'{}', b'{}'], 'frames'),
    ([b''], 'type byte'),
    ([b'\x01\x02'], 'type byte'),
    ([b'\x09'], 'unknown message type 0x09'),
    ([b'\xff', b'{}'], 'unknown message type'),
    ([b'\x03', b'\xff\xfe'], 'UTF-8'),
    ([b'\x03', b'{"a": '], 'JSON'),
    ([b'\x03', b'[' * 5000 + b']' * 5000], 'nested'),
    ([b'\x03', b'[' * 17 + b']' * 17], 'nested'),
    ([b'\x03', b'"' + b'a' * MAX_CONTROL_BYTES + b'"'], 'too large'),
])
def test_malformed_control_messages_raise_with_reason(frames, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode_control(frames)


def test_nesting_at_the_limit_is_accepted():
    assert decode_control([b'\x03', b'[' * 16 + b']' * 16])[0] is MessageType.who


def _me(**changes):
    payload = {'version': 1, 'name': 'n', 'endpoints': {'control': 'tcp://127.0.0.1:1'},
               'devices': [{'id': 'a', 'endpoints': {'depth': 'tcp://127.0.0.1:2'}}]}
    payload.update(changes)
    return payload


def test_me_validation():
    assert validate_me_payload(_me()) == _me()
    bad = [_me(version=2), _me(version='1'), _me(name=3), _me(endpoints={}),
           _me(devices={}), _me(devices=[{'endpoints': {}}]), _me(devices=[{'id': 'a'}]),
           _me(devices=[{'id': 'a', 'endpoints': {}}, {'id': 'a', 'endpoints': {}}]), []]
    for payload in bad:
        with pytest.raises(ProtocolError):
            validate_me_payload(payload)


def _header(**changes):
    fields = {'codec': 1, 'width': 512, 'height': 424, 'flags': 0,
              'sequence': 2 ** 40 + 7, 'timestamp_ns': 1_700_000_000_123_456_789,
              'device_timestamp': 99, 'payload_size': 1234}
    fields.update(changes)
    return FrameHeader(**fields)


def test_frame_header_round_trip():
    packed = pack_frame_header(_header())
    assert len(packed) == FRAME_HEADER_SIZE == 44
    assert packed[:4] == b'SK2D' and packed[4] == 1
    assert unpack_frame_header(packed, 512 * 424) == _header()


@pytest.mark.parametrize('mutate, reason', [
    (lambda b: b[:20], 'too short'),
    (lambda b: b'XXXX' + b[4:], 'magic'),
    (lambda b: b[:4] + b'\x02' + b[5:], 'version'),
    (lambda b: b + b'\x00', 'size'),
    (lambda b: b[:6] + b'\x10\x00' + b[8:], 'size'),
])
def test_bad_frame_headers(mutate, reason):
    with pytest.raises(ProtocolError, match=reason):
        unpack_frame_header(mutate(pack_frame_header(_header())), 512 * 424)


@pytest.mark.parametrize('width, height', [(0, 424), (512, 0), (1024, 1024), (65535, 65535)])
def test_frame_header_may_not_ask_for_more_than_a_frame(width, height):
    packed = pack_frame_header(_header(width=width, height=height))
    with pytest.raises(ProtocolError, match='outside limits'):
        unpack_frame_header(packed, 512 * 424)
