"""Depth images in the wire format of image_transport's ``compressedDepth`` transport.

``<topic>/compressedDepth`` carries a ``sensor_msgs/CompressedImage`` that any stock
image_transport subscriber (compressed_depth_image_transport) decodes back into the
``16UC1`` image, and that ``ros2 bag record`` stores at about a third of the raw size
(``bench/bench_compressed_depth.py``). :py:func:`encode` makes its ``data`` from a
uint16 depth array (millimetres, 0 = no reading) without ROS;
:py:func:`fill_compressed_depth_image` fills a message. Both are lossless: unlike the
plugin, whose ``depth_max`` (10 m by default) zeroes farther pixels, nothing is dropped.

In a node, beside the ``depth/image_raw`` publisher and with its QoS, a
``CompressedImage`` publisher on ``depth/image_raw/`` + :py:data:`TRANSPORT`; for each
depth frame, only while that publisher has subscribers (``get_subscription_count()``)::

    pub.publish(fill_compressed_depth_image(
        CompressedImage, frame.array, frame_id, stamp_ns, codec=codec, png_level=level))

with the ``frame_id`` and stamp of the depth ``Image``. *codec* ``'png'`` suits every
distribution; ``'rvl'`` is cheaper and smaller but needs jazzy or later on the receiving
side. It costs about 5 ms a 512 x 424 frame for PNG, 3 ms for RVL (one core).

Source read: ros-perception/image_transport_plugins, ``compressed_depth_image_transport``,
branch ``rolling`` at commit 7404d772b66f586f5f56e568671ae20e8a64bc7e (2024-02-17):
``src/codec.cpp`` (``encodeCompressedDepthImage``, ``decodeCompressedDepthImage``),
``include/compressed_depth_image_transport/compression_common.h`` (``ConfigHeader``),
``src/rvl_codec.cpp`` (``RvlCodec``), ``src/compressed_depth_publisher.cpp`` (parameters).
RVL came to ROS 2 with PR #159 (commits 23937bb, 8d44439, b3da860, 2023), released in
4.0.0 (2024): jazzy, kilted and rolling decode it; humble (branch ``humble``, ef9442d)
and iron (f7898e5) decode PNG only. Compared with ``humble``'s ``src/codec.cpp`` and
ROS 1 ``noetic-devel`` (cae592c).

``CompressedImage.format``
    ``'16UC1; compressedDepth png'`` or ``'16UC1; compressedDepth rvl'``
    (:py:data:`PNG_FORMAT`, :py:data:`RVL_FORMAT`): the encoding of the raw image, then
    ``'; compressedDepth '`` and the codec, as the rolling/jazzy encoder writes it. A
    decoder takes the encoding from the text before ``;`` and the codec from the text
    after it; humble and iron write ``'16UC1; compressedDepth'`` and their decoders
    ignore everything after ``;`` (always PNG), so the PNG format decodes on every
    distribution, RVL on jazzy and later only.

``CompressedImage.data``: a 12-byte ``ConfigHeader``, then the compressed image.
    The header is the C struct ``{enum compressionFormat format; float depthParam[2];}``
    copied with ``memcpy`` in the host's byte order: a 4-byte ``int`` enum (values
    ``UNDEFINED = -1``, ``INV_DEPTH = 0``; the encoder always writes ``INV_DEPTH``), then
    two IEEE 754 ``float`` (``depthQuantA``, ``depthQuantB``), no padding
    (``sizeof == 12`` on every ABI ROS supports, all little-endian: struct format
    ``'<iff'``). The quantisation parameters only mean something for ``32FC1``
    images; for ``16UC1`` ROS 2's encoder leaves them uninitialised and every decoder
    ignores them. Here they are 0.0, as ROS 1 noetic writes them
    (``ConfigHeader compressionConfig {};``). A decoder needs ``len(data) > 12``.

PNG (``png``)
    A 16-bit greyscale PNG of the image (height x width, as the plugin's
    ``cv::imencode('.png', 16UC1 image)``), decoded by ``cv::imdecode(...,
    IMREAD_UNCHANGED)``. PNG says nothing of how it was compressed: any valid PNG
    decodes the same. :py:data:`DEFAULT_PNG_LEVEL` (None) is Huffman-only deflate with the
    Paeth row filter, chosen by measurement on the 30 real Kinect v2 frames of
    ``shared/data`` (``bench/bench_compressed_depth.py``, one core): ratio 2.86 at
    4.9 ms a 512 x 424 frame, about as small as zlib level 6 (2.88, 40 ms) in less time
    than level 1 (2.57, 7.3 ms); level 3, the plugin's default on iron and later, gives
    2.72 in 13 ms, level 9, humble's default, 2.95 in 310 ms. A
    ``png_level`` of 0-9 means what the plugin's ``png_level`` means: zlib's level
    with OpenCV's default filters and strategy.

RVL (``rvl``)
    ``uint32 cols``, ``uint32 rows`` (host order: little-endian), then the RVL stream
    (A. D. Wilson, "Fast Lossless Depth Image Compression", SIGCHI 2017, as
    ``rvl_codec.cpp``) of the ``rows * cols`` pixels in row-major order:

    * The pixels are cut into pairs of runs: a run of zeros (possibly empty), then the
      run of non-zero pixels that follows it (non-empty, except in a last pair that
      holds the zeros at the end of the image). Per pair, the stream holds the number
      of zeros, the number of non-zeros, then for each non-zero pixel the zigzag of its
      difference from the previous non-zero pixel of the image (the first one's from
      0): ``delta = current - previous`` as an ``int``, ``(delta << 1) ^ (delta >> 31)``.
    * Every number is written as variable-length nibbles, least significant 3 bits
      first, each nibble's high bit (8) set if another nibble follows.
    * Nibbles fill 32-bit words from the most significant nibble down; each word is
      stored as a host-order (little-endian) ``int``; the last word is padded with zero
      nibbles. The stream is ``4 * ceil(nibbles / 8)`` bytes.

    The encoder here is vectorised numpy: 2.9 ms a 512 x 424 frame (the plugin's C++
    ``CompressRVL``, compiled with -O2 on the same machine: 1.1 ms), ratio 3.06 on the
    real Kinect v2 frames. jazzy's decoder applies no size check to ``16UC1``; its
    ``32FC1`` path refuses an image of more than 5 times as many pixels as compressed
    bytes, which a frame that is nearly all zeros exceeds (real frames do not), should
    a later version apply it to ``16UC1`` too.

Thread-safe: no state is shared between calls; ``cv2.imencode`` releases the GIL.
"""
import array
import numbers
import struct
from typing import Any, List, Optional

import cv2
import numpy as np
import numpy.typing as npt

from .conversions import stamp_from_ns

__all__ = [
    'CODECS', 'CONFIG_HEADER', 'DEFAULT_CODEC', 'DEFAULT_PNG_LEVEL', 'FORMATS',
    'HEADER_SIZE', 'INV_DEPTH', 'MAX_PIXELS', 'PNG_FORMAT', 'RVL_FORMAT', 'TRANSPORT',
    'encode', 'fill_compressed_depth_image', 'format_for',
]

#: The transport's name: its topic is ``<base topic>/compressedDepth``, e.g.
#: ``depth/image_raw/compressedDepth``.
TRANSPORT = 'compressedDepth'
#: ``CompressedImage.format`` of a PNG: decoded by every ROS 2 distribution.
PNG_FORMAT = '16UC1; compressedDepth png'
#: ``CompressedImage.format`` of RVL: decoded by jazzy and later, not humble nor iron.
RVL_FORMAT = '16UC1; compressedDepth rvl'
#: The format of each codec.
FORMATS = {'png': PNG_FORMAT, 'rvl': RVL_FORMAT}
#: The codecs :py:func:`encode` takes.
CODECS = tuple(FORMATS)
#: The codec the plugin uses when its ``format`` parameter is not set.
DEFAULT_CODEC = 'png'
#: ``ConfigHeader``: ``compressionFormat format`` (int32), ``float depthParam[2]``.
CONFIG_HEADER = struct.Struct('<iff')
#: Size in bytes of ``ConfigHeader``.
HEADER_SIZE = CONFIG_HEADER.size
#: ``compressionFormat`` value the plugin's encoder writes (``UNDEFINED`` is -1).
INV_DEPTH = 0
#: The header of every ``16UC1`` image: INV_DEPTH and unused quantisation parameters 0.0.
_HEADER_16UC1 = CONFIG_HEADER.pack(INV_DEPTH, 0.0, 0.0)
#: ``png_level`` default: Huffman-only deflate and the Paeth filter (see the module doc).
DEFAULT_PNG_LEVEL: Optional[int] = None
_PNG_FAST = [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
# OpenCV before 4.10 has no filter choice: it then uses libpng's adaptive filters (2.83
# too, about a millisecond slower).
if hasattr(cv2, 'IMWRITE_PNG_FILTER'):
    _PNG_FAST += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
#: Most pixels an image may have: the RVL decoder reads at most 10 nibbles (30 bits) a
#: number, OpenCV's decoder takes at most 2 ** 30 pixels (``CV_IO_MAX_IMAGE_PIXELS``).
MAX_PIXELS = 2 ** 30 - 1
#: 8 ** k for k = 1..10: a number >= 8 ** k needs more than k nibbles.
_NIBBLE_LIMITS = [8 ** k for k in range(1, 11)]


def format_for(codec: str) -> str:
    """Return the ``CompressedImage.format`` of *codec* (``'png'`` or ``'rvl'``)."""
    try:
        return FORMATS[codec]
    except (KeyError, TypeError):
        raise ValueError('compressedDepth codec must be one of {0}, not {1!r}'.format(
            ', '.join(CODECS), codec)) from None


def _check_depth(depth: Any) -> npt.NDArray[np.uint16]:
    """Return *depth* as a C-contiguous native uint16 2-D array, or raise ValueError."""
    if not isinstance(depth, np.ndarray):
        raise ValueError('depth must be a numpy array, not {0}'.format(type(depth).__name__))
    if depth.ndim != 2:
        raise ValueError('depth must be a 2-D (height, width) array, not shape {0}'.format(
            depth.shape))
    if depth.dtype.kind != 'u' or depth.dtype.itemsize != 2:
        raise ValueError('depth must be a uint16 array (16UC1), not {0}'.format(depth.dtype))
    if depth.size == 0:
        raise ValueError('depth must not be empty, got shape {0}'.format(depth.shape))
    if depth.size > MAX_PIXELS:
        raise ValueError('depth of shape {0} has more than {1} pixels'.format(
            depth.shape, MAX_PIXELS))
    return np.ascontiguousarray(depth, dtype=np.uint16)  # native byte order


def _check_png_level(png_level: Optional[int]) -> Optional[int]:
    if png_level is None:
        return None
    if isinstance(png_level, bool) or not isinstance(png_level, numbers.Integral) \
            or not 0 <= png_level <= 9:
        raise ValueError('png_level must be None or a whole number from 0 to 9, not '
                         '{0!r}'.format(png_level))
    return int(png_level)


def _png(depth: npt.NDArray[np.uint16], png_level: Optional[int]) -> npt.NDArray[np.uint8]:
    if png_level is None:
        params = _PNG_FAST
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, png_level]
    ok, png = cv2.imencode('.png', depth, params)
    if not ok:  # pragma: no cover - libpng refuses nothing a uint16 2-D array can be
        raise ValueError('OpenCV could not encode a {0} PNG'.format(depth.shape))
    return png


def _rvl_numbers(flat: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint32]:
    """Return the numbers the RVL stream of *flat* holds, in order (see the module doc)."""
    n = flat.size
    nonzero = flat != 0
    # Indices where a non-zero run starts (even entries) and ends (odd entries).
    edges = np.flatnonzero(np.diff(nonzero.view(np.int8), prepend=np.int8(0),
                                   append=np.int8(0)))
    starts, ends = edges[0::2], edges[1::2]
    runs = starts.size
    lengths = ends - starts
    zeros = starts.copy()
    zeros[1:] -= ends[:-1]
    tail = n - (int(ends[-1]) if runs else 0)  # zeros after the last non-zero run
    values = flat[nonzero].astype(np.int32)
    delta = np.diff(values, prepend=np.int32(0))
    zigzag = ((delta << 1) ^ (delta >> 31)).view(np.uint32)
    numbers_ = np.empty(2 * runs + values.size + (2 if tail else 0), np.uint32)
    # Pair k starts after the 2 k numbers of the pairs before it and their values.
    first = np.cumsum(lengths)
    first -= lengths
    first += np.arange(0, 2 * runs, 2)
    is_value = np.ones(numbers_.size, bool)
    is_value[first] = False
    is_value[first + 1] = False
    numbers_[first] = zeros
    numbers_[first + 1] = lengths
    if tail:
        numbers_[-2:] = (tail, 0)
        is_value[-2:] = False
    numbers_[is_value] = zigzag
    return numbers_


def _rvl_nibbles(numbers_: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    """Return the variable-length nibbles of *numbers_*, in stream order."""
    count = np.ones(numbers_.size, np.uint8)  # nibbles of each number
    largest = int(numbers_.max())
    for limit in _NIBBLE_LIMITS:
        if limit > largest:
            break
        count += numbers_ >= limit
    end = np.cumsum(count, dtype=np.intp)
    nibbles = np.empty(int(end[-1]), np.uint8)
    # Write the k-th nibble of every number that has one, k = 0, 1, ...: few have more
    # than two, so each round works on fewer numbers.
    position = end - count
    left = count - 1  # nibbles after this one
    value: npt.NDArray[Any] = numbers_
    while True:
        more = left != 0
        nibble = (value & 7).astype(np.uint8)
        nibble |= more.view(np.uint8) << 3
        nibbles[position] = nibble
        keep = np.flatnonzero(more)
        if not keep.size:
            return nibbles
        position = position[keep] + 1
        value = value[keep] >> 3
        left = left[keep] - 1


def _rvl_words(nibbles: npt.NDArray[np.uint8]) -> bytes:
    """Return *nibbles* packed into little-endian 32-bit words, first nibble on top."""
    padded = np.zeros(-(-nibbles.size // 8) * 8, np.uint8)
    padded[:nibbles.size] = nibbles
    # Two nibbles a byte, first in the high half; the words are little-endian, so the
    # four bytes of each word go out last first.
    pairs = padded[0::2] << 4
    pairs |= padded[1::2]
    return pairs.reshape(-1, 4)[:, ::-1].tobytes()


def _rvl(depth: npt.NDArray[np.uint16]) -> List[bytes]:
    rows, cols = depth.shape
    words = _rvl_words(_rvl_nibbles(_rvl_numbers(depth.reshape(-1))))
    return [struct.pack('<II', cols, rows), words]


def _parts(depth: Any, codec: str, png_level: Optional[int]) -> List[Any]:
    format_for(codec)
    png_level = _check_png_level(png_level)
    depth = _check_depth(depth)
    if codec == 'png':
        return [_HEADER_16UC1, _png(depth, png_level)]
    return [_HEADER_16UC1] + _rvl(depth)


def encode(depth: npt.NDArray[np.uint16], codec: str = DEFAULT_CODEC,
           png_level: Optional[int] = DEFAULT_PNG_LEVEL) -> bytes:
    """Return the ``CompressedImage.data`` of the depth image *depth* in *codec*.

    *depth* is a 2-D ``uint16`` numpy array (height, width) of either byte order, of 1
    to :py:data:`MAX_PIXELS` pixels; *codec* is ``'png'`` (every distribution) or
    ``'rvl'`` (jazzy and later); *png_level*, for PNG only, None (Huffman-only deflate
    with the Paeth filter: the measured best) or the plugin's ``png_level``, zlib's
    level 0-9. The message's ``format`` is :py:func:`format_for` *codec*. Raises
    ValueError for anything else.
    """
    return b''.join(_parts(depth, codec, png_level))


def fill_compressed_depth_image(msg: Any, depth: npt.NDArray[np.uint16], frame_id: str,
                                stamp_ns: int, codec: str = DEFAULT_CODEC,
                                png_level: Optional[int] = DEFAULT_PNG_LEVEL) -> Any:
    """Fill a ``sensor_msgs/CompressedImage`` with *depth* as ``compressedDepth``.

    *msg* is a message or its class (then a new one is made); the message is returned.
    ``format`` and ``data`` as :py:func:`format_for` and :py:func:`encode` (arguments
    *depth*, *codec*, *png_level* as there), ``header.frame_id`` *frame_id* and
    ``header.stamp`` *stamp_ns* (ns since the epoch, as
    :py:func:`streamkinect2_ros.conversions.stamp_from_ns`). Raises ValueError, leaving
    the message untouched, for a depth image, codec or level :py:func:`encode` refuses.
    """
    parts = _parts(depth, codec, png_level)
    if isinstance(msg, type):
        msg = msg()
    stamp_from_ns(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = FORMATS[codec]
    data = array.array('B')
    for part in parts:
        data.frombytes(part)
    msg.data = data
    return msg
