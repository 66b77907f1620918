"""Wire formats: control messages and depth frame messages.

See ``docs/protocol.md`` for the specification these functions implement.
"""
import enum
import json
import struct
from typing import (Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar,
                    Union)

from .common import PROTOCOL_VERSION, ProtocolError

__all__ = [
    'MessageType', 'encode_control', 'decode_control', 'FrameHeader', 'FRAME_MAGIC',
    'FRAME_VERSION', 'FRAME_HEADER_SIZE', 'FRAME_HEADER_FORMAT', 'pack_frame_header',
    'unpack_frame_header',
    'FrameMessage', 'decode_frame_message', 'CONTROL_MAX_MESSAGE_SIZE', 'MAX_CONTROL_BYTES',
    'MAX_JSON_DEPTH', 'validate_me_payload', 'BytesLike', 'MessageParts', 'STREAM_IDS',
    'FLAG_PAIRED', 'frame_flags', 'header_stream', 'is_int64', 'ping_payload',
    'pong_payload', 'PongTimes', 'decode_pong_times', 'shift_frame_timestamp',
]

#: Largest control message payload accepted, in bytes.
MAX_CONTROL_BYTES: int = 64 * 1024
#: Deepest nesting of JSON containers accepted in a control payload.
MAX_JSON_DEPTH: int = 16
#: Control messages larger than this make ZeroMQ drop the sending peer, on both ends
#: (``ZMQ_MAXMSGSIZE``; defence in depth: payloads above :py:data:`MAX_CONTROL_BYTES` are
#: answered with an error).
CONTROL_MAX_MESSAGE_SIZE: int = 1024 * 1024

#: A bytes-like object: what a frame header or payload may be given as.
BytesLike = Union[bytes, bytearray, memoryview]
#: The parts of a received ZeroMQ message: bytes-like objects or ``zmq.Frame`` objects.
MessageParts = Sequence[Any]


class MessageType(enum.Enum):
    """Control message types: the first frame of every control message is one byte."""

    error = 0x00
    ping = 0x01
    pong = 0x02
    who = 0x03
    me = 0x04


def encode_control(msg_type: MessageType, payload: Any = None) -> List[bytes]:
    """Return the list of frames for a control message of *msg_type* with *payload*."""
    frames = [bytes((msg_type.value,))]
    if payload is not None:
        frames.append(json.dumps(payload, separators=(',', ':')).encode('utf8'))
    return frames


def _json_depth_ok(obj: Any, limit: int) -> bool:
    # Iterative walk: bounded by the payload size, no recursion.
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            values = item.values() if isinstance(item, dict) else item
            stack.extend((v, depth + 1) for v in values)
    return True


def decode_control(frames: MessageParts) -> Tuple[MessageType, Any]:
    """Decode a received control message into ``(MessageType, payload or None)``.

    Raises :py:class:`ProtocolError` with a human-readable reason for anything
    malformed: wrong frame count, unknown type byte, oversized, invalid UTF-8 or JSON,
    or JSON nested deeper than :py:data:`MAX_JSON_DEPTH`.
    """
    frames = [bytes(f) if not isinstance(f, bytes) else f for f in frames]
    if len(frames) not in (1, 2):
        raise ProtocolError(
            'control message must have 1 or 2 frames, got {0}'.format(len(frames)))
    if len(frames[0]) != 1:
        raise ProtocolError(
            'first frame must be one type byte, got {0} bytes'.format(len(frames[0])))
    try:
        msg_type = MessageType(frames[0][0])
    except ValueError:
        raise ProtocolError('unknown message type 0x{0:02x}'.format(frames[0][0])) from None
    if len(frames) == 1:
        return msg_type, None
    raw = frames[1]
    if len(raw) > MAX_CONTROL_BYTES:
        raise ProtocolError('payload too large ({0} > {1} bytes)'.format(
            len(raw), MAX_CONTROL_BYTES))
    try:
        payload = json.loads(raw.decode('utf8'))
    except UnicodeDecodeError:
        raise ProtocolError('payload is not valid UTF-8') from None
    except RecursionError:
        raise ProtocolError('payload JSON nested too deeply') from None
    except ValueError as err:
        raise ProtocolError('payload is not valid JSON: {0}'.format(err)) from None
    if not _json_depth_ok(payload, MAX_JSON_DEPTH):
        raise ProtocolError('payload JSON nested deeper than {0}'.format(MAX_JSON_DEPTH))
    return msg_type, payload


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def is_int64(value: Any) -> bool:
    """Tell whether *value* is an integer (not a bool) that fits in 64 signed bits."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and _INT64_MIN <= value <= _INT64_MAX)


# ---------------------------------------------------------------------------------------
# Timed ping and pong (the clock offset, see streamkinect2.clock)

def ping_payload(client_ns: int) -> Dict[str, int]:
    """Return the payload of a timed ``ping`` sent at *client_ns* (the client's clock)."""
    return {'client_ns': int(client_ns)}


def pong_payload(ping: Any, recv_ns: int, send_ns: int) -> Optional[Dict[str, int]]:
    """Return the payload of the ``pong`` answering a ping whose payload is *ping*.

    None (a plain pong, as in 2014) for a ping without payload; else the server's clock
    at receipt (*recv_ns*) and reply (*send_ns*), with the ping's ``client_ns`` echoed.
    Raises :py:class:`ProtocolError` for a payload that is not a JSON object, or whose
    ``client_ns`` is not a 64-bit integer.
    """
    if ping is None:
        return None
    if not isinstance(ping, dict):
        raise ProtocolError('ping payload must be a JSON object')
    reply = {'recv_ns': int(recv_ns), 'send_ns': int(send_ns)}
    if 'client_ns' in ping:
        if not is_int64(ping['client_ns']):
            raise ProtocolError('ping client_ns must be a 64-bit integer')
        reply['client_ns'] = ping['client_ns']
    return reply


class PongTimes(NamedTuple):
    """The times a timed ``pong`` carries, ns."""

    #: the ping's send time, echoed (the client's clock)
    client_ns: int
    #: when the server received the ping (its clock: the clock that stamps frames)
    recv_ns: int
    #: when the server sent the pong (its clock)
    send_ns: int


def decode_pong_times(payload: Any) -> PongTimes:
    """Return the :py:class:`PongTimes` of a ``pong`` payload; ProtocolError if it has none.

    The payload must be a JSON object whose ``client_ns``, ``recv_ns`` and ``send_ns``
    are 64-bit integers (other keys are ignored).
    """
    if not isinstance(payload, dict):
        raise ProtocolError('pong payload is not a JSON object')
    times: List[Any] = [payload.get(key) for key in PongTimes._fields]
    if not all(is_int64(value) for value in times):
        raise ProtocolError('pong payload lacks 64-bit integer {0}'.format(
            ', '.join(PongTimes._fields)))
    return PongTimes(*times)


def validate_me_payload(payload: Any) -> Dict[str, Any]:
    """Check a ``me`` payload and return it; raise :py:class:`ProtocolError` if invalid."""
    if not isinstance(payload, dict):
        raise ProtocolError('me payload must be a JSON object')
    if payload.get('version') != PROTOCOL_VERSION:
        raise ProtocolError('unsupported server protocol version {0!r}'.format(
            payload.get('version')))
    if not isinstance(payload.get('name'), str):
        raise ProtocolError('me payload lacks a string "name"')
    endpoints = payload.get('endpoints')
    if not isinstance(endpoints, dict) or not isinstance(endpoints.get('control'), str):
        raise ProtocolError('me payload lacks endpoints.control')
    devices = payload.get('devices')
    if not isinstance(devices, list):
        raise ProtocolError('me payload lacks a "devices" list')
    seen = set()
    for device in devices:
        if not isinstance(device, dict) or not isinstance(device.get('id'), str):
            raise ProtocolError('device record lacks a string "id"')
        dev_endpoints = device.get('endpoints')
        if not isinstance(dev_endpoints, dict) or not isinstance(
                dev_endpoints.get('depth', ''), str):
            raise ProtocolError('device {0!r} has invalid endpoints'.format(device['id']))
        if device['id'] in seen:
            raise ProtocolError('duplicate device id {0!r}'.format(device['id']))
        seen.add(device['id'])
    return payload


# ---------------------------------------------------------------------------------------
# Depth frame messages

#: First four bytes of every depth frame header.
FRAME_MAGIC: bytes = b'SK2D'
#: Version of the depth frame header layout.
FRAME_VERSION: int = 1
#: The struct format of a version-1 frame header (magic, version, codec, header size,
#: width, height, flags, sequence, timestamp_ns, device timestamp, payload size).
FRAME_HEADER_FORMAT: str = '<4sBBHHHIQqQI'
_HEADER = struct.Struct(FRAME_HEADER_FORMAT)
#: Size in bytes of a version-1 frame header.
FRAME_HEADER_SIZE: int = _HEADER.size
# Where timestamp_ns sits in a header: after magic, version, codec, header size, width,
# height, flags and sequence.
_TIMESTAMP = struct.Struct('<q')
_TIMESTAMP_OFFSET = struct.calcsize('<4sBBHHHIQ')


class FrameHeader(NamedTuple):
    """Decoded depth frame header (a tuple with named fields, see ``docs/protocol.md``)."""

    #: codec id of the payload
    codec: int
    #: frame width in pixels
    width: int
    #: frame height in pixels
    height: int
    #: the stream (low byte, :py:data:`STREAM_IDS`) and :py:data:`FLAG_PAIRED`
    flags: int
    #: frame sequence number
    sequence: int
    #: capture time, ns since the epoch
    timestamp_ns: int
    #: device clock, 0 when none
    device_timestamp: int
    #: payload length in bytes
    payload_size: int


#: The stream a frame message carries, in the low byte of the header's ``flags``: every
#: frame of a 2014-style depth-only peer (flags 0) is depth.
STREAM_IDS: Dict[str, int] = {'depth': 0, 'ir': 1, 'color': 2}
_STREAM_NAMES = {number: name for name, number in STREAM_IDS.items()}
#: Header flag: a colour frame whose sequence and timestamps are those of the depth and
#: IR capture it was paired with (nearest in device time, within half a frame period).
FLAG_PAIRED = 0x100
_KNOWN_FLAGS = 0xFF | FLAG_PAIRED


def frame_flags(stream: str, paired: bool = False) -> int:
    """Return the header ``flags`` of a frame of *stream* (``'depth'``, ``'ir'``, ``'color'``)."""
    return STREAM_IDS[stream] | (FLAG_PAIRED if paired else 0)


def header_stream(header: 'FrameHeader') -> str:
    """Return the stream a frame header says it carries; ProtocolError if unknown."""
    name = _STREAM_NAMES.get(header.flags & 0xFF)
    if name is None or header.flags & ~_KNOWN_FLAGS:
        raise ProtocolError('unknown stream or flags 0x{0:x} in the frame header'.format(
            header.flags))
    return name


_Message = TypeVar('_Message', bound='FrameMessage')


def pack_frame_header(header: FrameHeader) -> bytes:
    """Return the bytes of a version-1 frame header for *header*."""
    return _HEADER.pack(FRAME_MAGIC, FRAME_VERSION, header.codec, FRAME_HEADER_SIZE,
                        header.width, header.height, header.flags,
                        header.sequence & 0xFFFFFFFFFFFFFFFF, header.timestamp_ns,
                        header.device_timestamp & 0xFFFFFFFFFFFFFFFF, header.payload_size)


def unpack_frame_header(buf: BytesLike, max_pixels: int) -> FrameHeader:
    """Parse and validate a frame header from the bytes-like *buf*.

    *max_pixels* bounds ``width * height``: a header may not ask the receiver to
    allocate more than that. Raises :py:class:`ProtocolError` on anything invalid.
    """
    buf = memoryview(buf)
    if len(buf) < FRAME_HEADER_SIZE:
        raise ProtocolError('frame header too short ({0} bytes)'.format(len(buf)))
    (magic, version, codec, header_size, width, height, flags, sequence, timestamp_ns,
     device_timestamp, payload_size) = _HEADER.unpack_from(buf)
    if magic != FRAME_MAGIC:
        raise ProtocolError('bad frame magic {0!r}'.format(magic))
    if version != FRAME_VERSION:
        raise ProtocolError('unsupported frame version {0}'.format(version))
    if header_size < FRAME_HEADER_SIZE or header_size != len(buf):
        raise ProtocolError('frame header size {0} does not match its frame ({1})'.format(
            header_size, len(buf)))
    if width == 0 or height == 0 or width * height > max_pixels:
        raise ProtocolError('frame size {0}x{1} outside limits (max {2} pixels)'.format(
            width, height, max_pixels))
    return FrameHeader(codec, width, height, flags, sequence, timestamp_ns,
                       device_timestamp, payload_size)


class FrameMessage(bytes):
    """One frame message as it goes on the wire: the header, then the payload.

    It is a :py:class:`bytes` object (the buffer-like ``compressed_frame`` of the
    reference API: header and payload back to back) that also knows its two parts:
    :py:attr:`parts` are the two ZeroMQ message frames a server sends, unchanged, and
    :py:attr:`header` the decoded header. Build one with :py:meth:`build`; a receiver
    decodes the two frames with :py:func:`decode_frame_message`.
    """

    __slots__ = ()

    @classmethod
    def build(cls: Type[_Message], header: FrameHeader, payload: BytesLike) -> _Message:
        """Return the message for *header* (a :py:class:`FrameHeader`) and *payload*.

        The header's ``payload_size`` is set from *payload*.
        """
        view = memoryview(payload).cast('B')
        header = FrameHeader._make(tuple(header[:7]) + (len(view),))
        return cls(pack_frame_header(header) + view)

    @property
    def header_size(self) -> int:
        """Return the length of the header in bytes."""
        size: int = _HEADER.unpack_from(self)[3]
        return size

    @property
    def header(self) -> FrameHeader:
        """Return the decoded :py:class:`FrameHeader`."""
        return unpack_frame_header(memoryview(self)[:self.header_size], 1 << 32)

    @property
    def parts(self) -> Tuple[memoryview, memoryview]:
        """Return ``(header, payload)`` as memoryviews: the two frames of the message."""
        view = memoryview(self)
        size = self.header_size
        return view[:size], view[size:]


def shift_frame_timestamp(parts: Sequence[BytesLike],
                          offset_ns: int) -> Tuple[bytes, BytesLike]:
    """Return the two parts of a frame message with its ``timestamp_ns`` moved by *offset_ns*.

    *parts* are a frame message's header and payload (e.g. :py:attr:`FrameMessage.parts`);
    the header is copied (44 bytes), the payload is not. For a server whose clock is
    offset for a test (``Server(clock_offset_ns=...)``).
    """
    header = bytearray(parts[0])
    if len(header) < FRAME_HEADER_SIZE:
        raise ProtocolError('frame header too short ({0} bytes)'.format(len(header)))
    (timestamp_ns,) = _TIMESTAMP.unpack_from(header, _TIMESTAMP_OFFSET)
    _TIMESTAMP.pack_into(header, _TIMESTAMP_OFFSET, timestamp_ns + int(offset_ns))
    return bytes(header), parts[1]


def decode_frame_message(frames: MessageParts,
                         max_pixels: int) -> Tuple[FrameHeader, BytesLike]:
    """Validate a received frame message; return ``(FrameHeader, payload)``.

    *frames* are the parts of the ZeroMQ message (bytes, or ``zmq.Frame`` objects);
    *max_pixels* bounds ``width * height`` (see :py:func:`unpack_frame_header`). The
    payload is returned as a buffer without copying. Raises :py:class:`ProtocolError`
    for a wrong number of parts, an invalid header, or a payload whose length differs
    from the header's.
    """
    if len(frames) != 2:
        raise ProtocolError('frame message must have 2 parts, got {0}'.format(len(frames)))
    header_buf, payload = (f.buffer if hasattr(f, 'buffer') else f for f in frames)
    header = unpack_frame_header(header_buf, max_pixels)
    if header.payload_size != len(payload):
        raise ProtocolError('payload is {0} bytes, header says {1}'.format(
            len(payload), header.payload_size))
    return header, payload
