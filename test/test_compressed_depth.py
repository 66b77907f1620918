"""``compressedDepth`` messages, checked with a decoder written from the plugin's source.

Every round trip goes through ``compressed_depth_spec`` (transcribed from
image_transport_plugins, see its docstring), never through an inverse of our encoder;
PNG is also decoded by OpenCV's ``imdecode(..., IMREAD_UNCHANGED)``, as the plugin does.
The RVL known answers are the bytes the plugin's own ``RvlCodec::CompressRVL``
(``rvl_codec.cpp`` at commit 7404d77, compiled) produced for those images.
"""
import glob
import os
import struct

import compressed_depth_spec as spec
import cv2
from hypothesis import given, HealthCheck, settings, strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest
from streamkinect2_ros import compressed_depth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data'))
DEPTH_SETS = sorted(glob.glob(os.path.join(SHARED, 'depth', '*.npz')))
RGBD = os.path.join(SHARED, 'rgbd', 'kinect2_sync_rgbd.npz')
CODECS = ('png', 'rvl')


def _real_frames():
    frames = []
    for path in DEPTH_SETS:
        with np.load(path) as data:
            frames += [(os.path.basename(path), i, f) for i, f in enumerate(data['frames'])]
    if os.path.exists(RGBD):
        with np.load(RGBD) as data:
            frames += [('kinect2_sync_rgbd', i, f) for i, f in enumerate(data['depth'])]
    return frames


REAL = _real_frames()
needs_real = pytest.mark.skipif(not REAL, reason='no real depth frames in ' + SHARED)


def _decode(codec, data):
    return spec.decode(compressed_depth.format_for(codec), data)


def _round_trip(depth, codec, png_level=None):
    """Encode *depth*, decode with the spec decoder, check it byte-exact; return the data."""
    data = compressed_depth.encode(depth, codec, png_level=png_level)
    assert isinstance(data, bytes)
    decoded = _decode(codec, data)
    assert decoded.encoding == '16UC1' and decoded.codec == codec
    assert decoded.image.dtype == np.uint16 and decoded.image.shape == depth.shape
    assert decoded.image.tobytes() == np.ascontiguousarray(depth, np.uint16).tobytes()
    if codec == 'rvl':
        # cols, rows, then whole 32-bit words, none of them left unread.
        assert struct.unpack_from('<II', data, spec.CONFIG_HEADER.size) == (
            depth.shape[1], depth.shape[0])
        assert decoded.rvl_words * 4 == len(data) - spec.CONFIG_HEADER.size - 8
    else:
        # The plugin's own decoding: cv::imdecode(imageData, cv::IMREAD_UNCHANGED).
        plugin = cv2.imdecode(np.frombuffer(data, np.uint8)[spec.CONFIG_HEADER.size:],
                              cv2.IMREAD_UNCHANGED)
        assert plugin.dtype == np.uint16 and np.array_equal(plugin, depth)
    return data


def test_format_strings():
    assert compressed_depth.TRANSPORT == 'compressedDepth'
    assert compressed_depth.PNG_FORMAT == '16UC1; compressedDepth png'
    assert compressed_depth.RVL_FORMAT == '16UC1; compressedDepth rvl'
    assert compressed_depth.format_for('png') == compressed_depth.PNG_FORMAT
    assert compressed_depth.format_for('rvl') == compressed_depth.RVL_FORMAT
    assert compressed_depth.DEFAULT_CODEC == 'png'  # the plugin's default, every distro
    for codec in CODECS:  # what the plugin's parser makes of them
        assert spec.codec_of(compressed_depth.format_for(codec)) == ('16UC1', codec)
    for bad in ('jpeg', 'PNG', '', None, 3):
        with pytest.raises(ValueError, match='compressedDepth codec'):
            compressed_depth.format_for(bad)


@pytest.mark.parametrize('codec', CODECS)
def test_config_header(codec):
    data = compressed_depth.encode(np.full((4, 6), 1234, np.uint16), codec)
    # int32 compressionFormat INV_DEPTH (0), float depthParam[2] = 0.0, 0.0; little-endian.
    assert compressed_depth.HEADER_SIZE == spec.CONFIG_HEADER.size == 12
    assert data[:12] == bytes(12)
    decoded = _decode(codec, data)
    assert decoded.format_value == spec.INV_DEPTH == compressed_depth.INV_DEPTH
    assert (decoded.depth_quant_a, decoded.depth_quant_b) == (0.0, 0.0)
    if codec == 'png':
        assert data[12:20] == b'\x89PNG\r\n\x1a\n'
    else:
        assert data[12:20] == struct.pack('<II', 6, 4)  # cols, then rows


@needs_real
@pytest.mark.parametrize('png_level', [None, 0, 1, 3])
def test_real_frames_png_round_trip(png_level):
    sizes = []
    for _, _, frame in REAL:
        sizes.append(len(_round_trip(frame, 'png', png_level)))
    if png_level is None:  # the measured choice stays well clear of raw
        raw = sum(f.nbytes for _, _, f in REAL)
        assert raw / sum(sizes) > 2.5


@needs_real
def test_real_frame_png_level_9():
    _round_trip(REAL[0][2], 'png', 9)  # humble's default level: slow, so one frame


@needs_real
def test_real_frames_rvl_round_trip():
    for name, i, frame in REAL:
        data = _round_trip(frame, 'rvl')
        assert len(data) < frame.nbytes / 2.5, (name, i)
        # A frame with readings everywhere but in a few holes passes even the stricter
        # size check of the plugin's 32FC1 path.
        assert spec.passes_32bit_size_check(data), (name, i)


@needs_real
def test_default_png_is_smaller_than_plugin_default_level():
    # The default (Huffman-only, Paeth) was chosen because it is smaller than level 3,
    # the plugin's default since iron, on real Kinect v2 frames (and faster: bench/).
    kinect2 = [f for name, _, f in REAL if 'kinect2' in name]
    ours = sum(len(compressed_depth.encode(f, 'png')) for f in kinect2)
    level3 = sum(len(compressed_depth.encode(f, 'png', png_level=3)) for f in kinect2)
    assert ours < level3


def _noise(shape, zeros, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 65536, shape, dtype=np.uint16)
    image[rng.random(shape) < zeros] = 0
    return image


EDGE_IMAGES = {
    'all_zero': np.zeros((424, 512), np.uint16),
    'all_max': np.full((424, 512), 65535, np.uint16),
    'single_zero': np.zeros((1, 1), np.uint16),
    'single_pixel': np.array([[4321]], np.uint16),
    'single_max': np.array([[65535]], np.uint16),
    'one_row_odd': np.arange(1, 8, dtype=np.uint16)[None, :],
    'one_column': np.arange(7, dtype=np.uint16)[:, None] * 9000,
    'odd_width_513': _noise((3, 513), 0.2, 1),
    'odd_width_1': _noise((11, 1), 0.5, 2),
    'noise': _noise((101, 77), 0.0, 3),
    'noise_with_holes': _noise((64, 33), 0.5, 4),
    'max_deltas': np.array([[0, 65535, 1, 65535, 0, 0, 65535, 1]], np.uint16),
    'trailing_zeros': np.array([[5, 6, 7, 0, 0, 0, 0]], np.uint16),
    'leading_zeros': np.array([[0, 0, 0, 0, 9, 9, 9]], np.uint16),
}


@pytest.mark.parametrize('codec', CODECS)
@pytest.mark.parametrize('name', sorted(EDGE_IMAGES))
def test_edge_images_round_trip(codec, name):
    _round_trip(EDGE_IMAGES[name], codec)


@pytest.mark.parametrize('codec', CODECS)
def test_any_layout_gives_the_same_bytes(codec):
    native = _noise((40, 30), 0.3, 5)
    big_endian = native.astype('>u2')
    strided = np.zeros((80, 30), np.uint16)
    strided[::2] = native
    fortran = np.asfortranarray(native)
    expected = compressed_depth.encode(native, codec)
    for layout in (big_endian, strided[::2], fortran):
        assert compressed_depth.encode(layout, codec) == expected
    _round_trip(big_endian, codec)


#: Bytes of the RVL stream (after cols and rows) from the plugin's own CompressRVL.
RVL_KNOWN_ANSWERS = [
    ([[0]], '00000010'),
    ([[7]], '0000e101'),
    ([[0, 65535, 0, 65535, 1, 0]], 'f3ffef11ffff0b1200000031'),
    ([[100, 101, 0], [0, 0, 99]], '3132890200000030'),
    ([[0, 0, 0, 0, 0, 1000, 1001, 1003, 998]], '24f38a5400000091'),
    ([[65535] * 5] * 3, 'ffff1e0f0000003000000000'),
    ([[0] * 9] * 2, '000000a2'),
    ([[4095, 4096, 32768, 12] + [0] * 13 + [5]], '12ffef04fce188881dd1f1ff00000010'),
]


@pytest.mark.parametrize('rows,stream', RVL_KNOWN_ANSWERS)
def test_rvl_known_answers(rows, stream):
    depth = np.array(rows, np.uint16)
    data = compressed_depth.encode(depth, 'rvl')
    assert data[20:].hex() == stream
    assert _decode('rvl', data).image.tolist() == rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depth=hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                        elements=st.one_of(st.just(0), st.integers(0, 65535),
                                           st.integers(1000, 1010))),
       codec=st.sampled_from(CODECS))
def test_any_image_round_trips(depth, codec):
    _round_trip(depth, codec)


@pytest.mark.parametrize('depth,message', [
    (np.zeros((4, 4), np.int16), 'uint16'),
    (np.zeros((4, 4), np.uint8), 'uint16'),
    (np.zeros((4, 4), np.uint32), 'uint16'),
    (np.zeros((4, 4), np.float32), 'uint16'),
    (np.zeros((4, 4), bool), 'uint16'),
    (np.zeros((4, 4), object), 'uint16'),
    (np.zeros(16, np.uint16), '2-D'),
    (np.zeros((4, 4, 1), np.uint16), '2-D'),
    (np.zeros((4, 4, 3), np.uint16), '2-D'),
    (np.zeros((), np.uint16), '2-D'),
    (np.zeros((0, 5), np.uint16), 'empty'),
    (np.zeros((5, 0), np.uint16), 'empty'),
    (np.broadcast_to(np.uint16(7), (32768, 32768)), 'more than'),  # 2 ** 30, no memory
    ([[1, 2], [3, 4]], 'numpy array'),
    (b'\x00' * 8, 'numpy array'),
    (None, 'numpy array'),
])
@pytest.mark.parametrize('codec', CODECS)
def test_bad_depth_raises_value_error(depth, message, codec):
    with pytest.raises(ValueError, match=message):
        compressed_depth.encode(depth, codec)


@pytest.mark.parametrize('png_level', [-1, 10, True, 1.5, '3', 2 ** 70])
def test_bad_png_level_raises_value_error(png_level):
    with pytest.raises(ValueError, match='png_level'):
        compressed_depth.encode(np.ones((2, 2), np.uint16), 'png', png_level=png_level)


def test_bad_codec_raises_value_error():
    with pytest.raises(ValueError, match='codec'):
        compressed_depth.encode(np.ones((2, 2), np.uint16), 'zstd')


# --- the spec decoder is a decoder, not a mirror: it refuses what the plugin refuses -----

def _png_message(depth=None):
    depth = np.arange(1, 61, dtype=np.uint16).reshape(6, 10) * 999 if depth is None else depth
    return compressed_depth.encode(depth, 'png')


def _rvl_message(depth=None):
    depth = np.arange(1, 61, dtype=np.uint16).reshape(6, 10) * 999 if depth is None else depth
    return compressed_depth.encode(depth, 'rvl')


def _flipped(data, at):
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def test_spec_decoder_reads_the_formats_the_plugin_reads():
    data = _png_message()
    image = _decode('png', data).image
    # Older encoders (humble, iron) write no codec; no ';' at all means PNG too.
    for legacy in ('16UC1; compressedDepth', '16UC1'):
        assert np.array_equal(spec.decode(legacy, data).image, image)
    with pytest.raises(spec.SpecError, match='Unsupported'):
        spec.decode('16UC1; compressedDepth jpeg', data)
    with pytest.raises(spec.SpecError, match='16-bit'):
        spec.decode('32FC1; compressedDepth png', data)


@pytest.mark.parametrize('codec,data', [
    ('png', b''),
    ('png', bytes(12)),  # the header alone: the plugin needs more than sizeof(ConfigHeader)
    ('rvl', bytes(12)),
    ('png', _png_message()[:-20]),  # truncated
    ('png', _png_message()[:40]),
    ('png', _flipped(_png_message(), 80)),  # one bit of the image data: CRC mismatch
    ('png', bytes(12) + os.urandom(500)),  # garbage
    ('png', _rvl_message()),  # RVL labelled PNG
    ('png', bytes(12) + cv2.imencode('.png', np.zeros((4, 4), np.uint8))[1].tobytes()),
    ('rvl', _rvl_message()[:-4]),  # truncated by a word
    ('rvl', _rvl_message()[:-1]),  # not whole words
    ('rvl', _rvl_message()[:17]),  # no room for cols and rows
    ('rvl', bytes(12) + struct.pack('<II', 0, 5) + bytes(8)),  # zero columns
    ('rvl', bytes(12) + struct.pack('<II', 5, 0) + bytes(8)),  # zero rows
    ('rvl', bytes(12) + struct.pack('<II', 65536, 65536) + bytes(8)),  # too large
    ('rvl', bytes(12) + struct.pack('<II', 4, 4) + b'\xff' * 8),  # endless number
    ('rvl', bytes(12) + struct.pack('<II', 2, 2) + struct.pack('<I', 0x70000000)),  # 7 zeros
    ('rvl', _png_message()),  # PNG labelled RVL
])
def test_spec_decoder_refuses_broken_messages(codec, data):
    with pytest.raises(spec.SpecError):
        _decode(codec, data)


# --- the message -------------------------------------------------------------------------

sensor_msgs = pytest.importorskip('sensor_msgs.msg')


@pytest.mark.parametrize('codec', CODECS)
def test_fill_compressed_depth_image(codec):
    from rclpy.serialization import deserialize_message, serialize_message
    depth = REAL[0][2] if REAL else _noise((424, 512), 0.1, 6)
    for msg in (sensor_msgs.CompressedImage, sensor_msgs.CompressedImage()):
        filled = compressed_depth.fill_compressed_depth_image(
            msg, depth, 'kinect2_depth_optical_frame', 1700000000123456789, codec=codec)
        assert isinstance(filled, sensor_msgs.CompressedImage)
        assert msg is filled or isinstance(msg, type)
        assert filled.format == compressed_depth.format_for(codec)
        assert filled.header.frame_id == 'kinect2_depth_optical_frame'
        stamp = filled.header.stamp
        assert (stamp.sec, stamp.nanosec) == (1700000000, 123456789)
        assert bytes(filled.data) == compressed_depth.encode(depth, codec)
        # What a subscriber receives: the serialised message, decoded per the plugin.
        received = deserialize_message(serialize_message(filled), sensor_msgs.CompressedImage)
        decoded = spec.decode(received.format, bytes(received.data))
        assert np.array_equal(decoded.image, depth)


def test_fill_png_level_and_refusals_leave_message_untouched():
    depth = _noise((30, 40), 0.2, 7)
    msg = compressed_depth.fill_compressed_depth_image(
        sensor_msgs.CompressedImage(), depth, 'f', 5, codec='png', png_level=0)
    assert bytes(msg.data) == compressed_depth.encode(depth, 'png', png_level=0)
    msg = sensor_msgs.CompressedImage()
    for kwargs in ({'depth': depth.astype(np.float32)}, {'codec': 'jpeg'},
                   {'png_level': 11}, {'stamp_ns': -1}, {'stamp_ns': 2 ** 80}):
        arguments = {'depth': depth, 'frame_id': 'f', 'stamp_ns': 5, 'codec': 'png'}
        arguments.update(kwargs)
        with pytest.raises(ValueError):
            compressed_depth.fill_compressed_depth_image(msg, **arguments)
        assert msg == sensor_msgs.CompressedImage()
