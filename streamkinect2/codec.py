"""Lossless codecs for depth frame payloads.

A depth frame is a 2-D array of ``uint16`` millimetres, *height* rows of *width* pixels,
where 0 means "no reading". :py:func:`encode` turns it into a payload and :py:func:`decode`
turns the payload back into the identical array. Width, height and the codec id travel in
the frame header (``docs/protocol.md``), not in the payload.

Codec 0, ``raw``
    ``width * height`` little-endian ``uint16`` values in row-major order (2 bytes a pixel).

Codec 1, ``grad-zstd`` (the default)
    Gradient prediction of the depth image with its holes filled, zigzag, byte planes, zstd.
    All arithmetic below is on unsigned 16-bit integers, modulo 2**16, so the codec is
    lossless for every value 0..65535. Let ``n = width * height`` and let ``x[i]``,
    ``0 <= i < n``, be the pixels in row-major order; a value at a negative index is 0.

    1. Mask: ``k[i] = 1 if x[i] != 0 else 0``.
    2. Fill: ``f[i] = x[i] if x[i] != 0 else f[i - 1]``; every zero pixel takes the value of
       the last non-zero pixel before it in row-major order (0 if there is none), so the
       edges of holes cost nothing to predict.
    3. Horizontal delta over the flattened image: ``h[i] = f[i] - f[i - 1]``.
    4. Vertical delta: ``g[i] = h[i] - h[i - width]``. Together, 3 and 4 subtract the
       prediction ``left + up - up_left`` (across row ends, ``left`` is the last pixel of the
       previous row).
    5. Zigzag, reading ``g`` as two's complement ``int16`` ``s``:
       ``z[i] = (s << 1) ^ (s >> 15)`` (arithmetic shift), so small residuals of either
       sign become small unsigned numbers.
    6. Content, ``2 * n + ceil(n / 8)`` bytes: the low bytes ``z[i] & 0xff`` for all ``i``,
       then the high bytes ``z[i] >> 8`` for all ``i``, then the mask ``k`` packed eight
       pixels a byte, first pixel in the most significant bit, the unused low bits of the
       last byte 0 (``numpy.packbits``).

    Payload: one byte, the layout version (1), followed by exactly one zstd frame (RFC 8878)
    of the content, with the content size field present and equal to the content length and
    with the content checksum present. No bytes may follow the frame. The encoder uses a
    fast zstd strategy with a 128 KiB window; a decoder may reject frames whose window is
    larger than 4 MiB.

    Decoding reverses the steps: from the planes, ``z = (high << 8) | low``;
    ``g = (z >> 1) ^ -(z & 1)``; ``h`` is the running sum of ``g`` down each column (step
    4); ``f`` is the running sum of ``h`` over the flattened image (step 3); finally
    ``x[i] = f[i] * k[i]``. The two running sums commute, so either may be done first.

:py:func:`decode` raises :py:class:`CodecError` on any payload that is not exactly what
:py:func:`encode` could have produced for the given width and height (as far as the
checks above tell), and never allocates much more than one frame, whatever the payload
claims. Both functions are thread-safe; each thread keeps its own zstd contexts and scratch
buffers.
"""
import threading
from typing import Any, Dict, Tuple

import numpy as np
import numpy.typing as npt
import zstandard

from .common import ProtocolError
from .protocol import BytesLike

__all__ = ['CodecError', 'CODEC_RAW', 'CODEC_GRAD_ZSTD', 'CODEC_JPEG', 'DEFAULT_CODEC',
           'CODEC_NAMES', 'encode', 'decode', 'encode_jpeg', 'jpeg_size', 'check_jpeg',
           'halve_bgrx']


class CodecError(ProtocolError):
    """Raised when a depth frame payload cannot be decoded."""


#: Raw little-endian ``uint16``, row-major.
CODEC_RAW: int = 0
#: Gradient prediction with hole filling, zigzag, byte planes and zstd (see module doc).
CODEC_GRAD_ZSTD: int = 1
#: The codec used when none is given.
DEFAULT_CODEC: int = CODEC_GRAD_ZSTD
#: Short names of the codecs, by id.
CODEC_NAMES: Dict[int, str] = {CODEC_RAW: 'raw', CODEC_GRAD_ZSTD: 'grad-zstd'}
#: Colour payloads: one baseline JPEG file (8-bit, decoded to BGR). Not a codec of
#: :py:func:`encode`/:py:func:`decode`, which are for uint16 images: see
#: :py:func:`encode_jpeg` and :py:func:`check_jpeg`.
CODEC_JPEG: int = 16

#: Payload layout version of CODEC_GRAD_ZSTD (first byte of the payload).
GRAD_ZSTD_VERSION: int = 1

# zstd settings, measured on real Kinect v2 frames: the residual planes are almost all
# literals, and short matches only cut them into pieces, so the fast strategy with the
# longest minimum match and the smallest hash table is both the fastest and the smallest
# (3.74 against 3.68 for level 1). A 128 KiB window keeps zstd's blocks (and so its
# Huffman tables) at their largest size; smaller blocks compress slightly better but more
# slowly.
_ZSTD_PARAMS: Dict[str, Any] = {
    'window_log': 17, 'chain_log': 12, 'hash_log': 6, 'search_log': 1, 'min_match': 7,
    'target_length': 0, 'strategy': zstandard.STRATEGY_FAST, 'write_checksum': True,
    'write_content_size': True, 'write_dict_id': False}
_MAX_WINDOW = 1 << 22
# Rows a block in the blocked running sum down the columns (decoding step 4).
_ROW_BLOCK = 16

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, 'compressor', None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters(**_ZSTD_PARAMS))
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, 'decompressor', None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
    return d


def _scratch(name: str, n: int, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """Return this thread's scratch buffer *name* of *n* items of *dtype* (reused)."""
    bufs = getattr(_local, 'scratch', None)
    if bufs is None:
        bufs = _local.scratch = {}
    b = bufs.get(name)
    if b is None or b.size != n or b.dtype != dtype:
        b = bufs[name] = np.empty(n, dtype)
    return b


def _check_depth(depth: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError('depth must be a 2-D array, not {0}-D'.format(depth.ndim))
    if depth.dtype.kind != 'u' or depth.dtype.itemsize != 2:
        raise TypeError('depth must be a uint16 array, not {0}'.format(depth.dtype))
    if depth.size == 0:
        raise ValueError('depth must not be empty')
    return np.ascontiguousarray(depth, dtype=np.uint16)


def _grad_zstd_content(x: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint8]:
    """Return the content of the zstd frame for C-contiguous *x* (a scratch buffer)."""
    height, width = x.shape
    n = x.size
    xf = x.reshape(n)
    mask = np.not_equal(xf, 0, out=_scratch('mask', n, np.bool_))
    count = int(np.count_nonzero(mask))
    a = _scratch('a', n, np.uint16)
    b = _scratch('b', n, np.uint16)
    h = _scratch('h', n, np.uint16)
    # Steps 2 and 3 at once: h is the delta of the non-zero values, placed at their
    # positions, and 0 in the holes.
    h.fill(0)
    if count:
        v = np.compress(mask, xf, out=a[:count])
        d = b[:count]
        d[0] = v[0]
        np.subtract(v[1:], v[:-1], out=d[1:])
        h[mask] = d
    g = a
    g[:width] = h[:width]
    np.subtract(h[width:], h[:-width], out=g[width:])
    s = g.view(np.int16)
    sign = b.view(np.int16)
    np.right_shift(s, 15, out=sign)
    np.left_shift(s, 1, out=s)
    s ^= sign
    content = _scratch('content', 2 * n + (n + 7) // 8, np.uint8)
    np.bitwise_and(g, 0xff, out=content[:n], casting='unsafe')
    np.right_shift(g, 8, out=content[n:2 * n], casting='unsafe')
    content[2 * n:] = np.packbits(mask)
    return content


def _encode_grad_zstd(x: npt.NDArray[np.uint16]) -> bytes:
    return bytes((GRAD_ZSTD_VERSION,)) + _compressor().compress(_grad_zstd_content(x).data)


_ZSTD_EXTRA_KW: Dict[str, Any] = {'allow_extra_data': False}


def _zstd_decompress(frame: memoryview, size: int) -> bytes:
    d = _decompressor()
    global _ZSTD_EXTRA_KW
    try:
        return d.decompress(frame, max_output_size=size, **_ZSTD_EXTRA_KW)
    except TypeError:
        if not _ZSTD_EXTRA_KW:
            raise
    # An older python-zstandard without allow_extra_data: trailing bytes go unnoticed.
    _ZSTD_EXTRA_KW = {}
    return d.decompress(frame, max_output_size=size)


def _decode_grad_zstd(payload: memoryview, width: int,
                      height: int) -> npt.NDArray[np.uint16]:
    n = width * height
    size = 2 * n + (n + 7) // 8
    if len(payload) < 2:
        raise CodecError('grad-zstd payload too short: {0} bytes'.format(len(payload)))
    if payload[0] != GRAD_ZSTD_VERSION:
        raise CodecError('unsupported grad-zstd layout version {0}'.format(payload[0]))
    frame = payload[1:]
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise CodecError('bad zstd frame header: {0}'.format(e)) from e
    if params.content_size != size:
        raise CodecError('zstd frame content size {0} is not the {1} bytes of a {2}x{3} '
                         'frame'.format(params.content_size, size, width, height))
    if not params.has_checksum:
        raise CodecError('zstd frame has no content checksum')
    if params.window_size > _MAX_WINDOW:
        raise CodecError('zstd window of {0} bytes is too large'.format(params.window_size))
    try:
        content = _zstd_decompress(frame, size)
    except zstandard.ZstdError as e:
        raise CodecError('zstd: {0}'.format(e)) from e
    if len(content) != size:
        raise CodecError('decompressed {0} bytes, expected {1}'.format(len(content), size))
    p = np.frombuffer(content, np.uint8)
    image = np.empty((height, width), np.uint16)
    out = image.reshape(n)
    np.left_shift(p[n:2 * n], 8, out=out, dtype=np.uint16)
    out |= p[:n]
    # Zigzag back: g = (z >> 1) ^ -(z & 1).
    neg = np.bitwise_and(out, 1, out=_scratch('neg', n, np.uint16))
    np.negative(neg, out=neg)
    out >>= 1
    out ^= neg
    _cumsum_rows(image)
    np.cumsum(out, out=out)
    np.multiply(out, np.unpackbits(p[2 * n:], count=n).view(np.bool_), out=out)
    return image


def _cumsum_rows(g: npt.NDArray[np.uint16]) -> None:
    """Replace each row of *g* (H, W) by the running sum of the rows down to it, in place.

    numpy's own cumsum along axis 0 is slow; this adds whole rows. Rows are taken in
    blocks of _ROW_BLOCK: first the running sums inside every block at once, then each
    block gets the last row of the block before it.
    """
    rows = g.shape[0]
    nblocks = rows // _ROW_BLOCK
    start = 1
    if nblocks >= 2:
        blocks = g[:nblocks * _ROW_BLOCK].reshape(nblocks, _ROW_BLOCK, -1)
        for j in range(1, _ROW_BLOCK):
            np.add(blocks[:, j - 1], blocks[:, j], out=blocks[:, j])
        for k in range(1, nblocks):
            np.add(blocks[k], blocks[k - 1, -1], out=blocks[k])
        start = nblocks * _ROW_BLOCK
    for i in range(start, rows):
        np.add(g[i - 1], g[i], out=g[i])


def encode(depth: npt.ArrayLike, codec: int = DEFAULT_CODEC) -> bytes:
    """Return the payload (bytes) encoding *depth* with *codec*.

    *depth* is a 2-D ``uint16`` array (height, width), of any strides. Raises ValueError
    for an unknown codec or an empty or non-2-D array and TypeError for another dtype.
    """
    x = _check_depth(depth)
    if codec == CODEC_GRAD_ZSTD:
        return _encode_grad_zstd(x)
    if codec == CODEC_RAW:
        return x.astype('<u2', copy=False).tobytes()
    raise ValueError('unknown codec {0!r}'.format(codec))


def decode(payload: BytesLike, width: int, height: int,
           codec: int) -> npt.NDArray[np.uint16]:
    """Return a new (height, width) ``uint16`` array decoded from *payload* with *codec*.

    *payload* is a bytes-like object. Raises :py:class:`CodecError` if the codec is
    unknown, the size is invalid or the payload is malformed, truncated or does not hold
    exactly one width x height frame.
    """
    try:
        width = int(width)
        height = int(height)
    except (TypeError, ValueError) as e:
        raise CodecError('bad frame size {0!r} x {1!r}'.format(width, height)) from e
    if width <= 0 or height <= 0:
        raise CodecError('bad frame size {0} x {1}'.format(width, height))
    try:
        payload = memoryview(payload).cast('B')
    except (TypeError, ValueError) as e:
        raise CodecError('payload is not a contiguous bytes-like object') from e
    try:
        if codec == CODEC_GRAD_ZSTD:
            return _decode_grad_zstd(payload, width, height)
        if codec == CODEC_RAW:
            if len(payload) != 2 * width * height:
                raise CodecError('raw payload of {0} bytes for a {1}x{2} frame'.format(
                    len(payload), width, height))
            return np.frombuffer(payload, '<u2').reshape(height, width).astype(np.uint16)
    except CodecError:
        raise
    except Exception as e:  # noqa: B902 - the contract: CodecError and nothing else
        raise CodecError('cannot decode payload: {0!r}'.format(e)) from e
    raise CodecError('unknown codec {0!r}'.format(codec))


# ---------------------------------------------------------------------------------------
# Colour: JPEG through libjpeg-turbo (simplejpeg, chosen by bench/bench_streams.py)

def encode_jpeg(pixels: npt.NDArray[np.uint8], quality: int = 90) -> bytes:
    """Return *pixels*, (height, width, 4) BGRX or (height, width, 3) BGR uint8, as JPEG.

    Baseline JPEG, 4:2:0 chroma subsampling, *quality* 1-100. BGRX rows are read in place
    (no copy), whatever their pitch.
    """
    import simplejpeg
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise ValueError('expected (height, width, 3 or 4) uint8 pixels, got {0} {1}'.format(
            pixels.dtype, pixels.shape))
    if not 1 <= int(quality) <= 100:
        raise ValueError('JPEG quality must be 1 to 100, got {0!r}'.format(quality))
    return bytes(simplejpeg.encode_jpeg(pixels, quality=int(quality),
                                        colorspace='BGRX' if pixels.shape[2] == 4 else 'BGR',
                                        colorsubsampling='420'))


def jpeg_size(payload: BytesLike) -> Tuple[int, int]:
    """Return ``(width, height)`` from a JPEG's header (about 2 us, nothing decoded).

    Raises :py:class:`CodecError` if *payload* does not start as a JPEG file does.
    """
    import simplejpeg
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(
            payload if isinstance(payload, bytes) else bytes(payload))
    except Exception as e:  # noqa: B902 - ValueError and whatever else: not a JPEG
        raise CodecError('not a JPEG: {0}'.format(e)) from e
    return int(width), int(height)


#: A JPEG must have its end-of-image marker within its last this many bytes (else it
#: was cut short): room for the padding a sensor's own JPEG may carry.
JPEG_TAIL_BYTES = 64


#: The start-of-frame markers (ITU-T T.81, table B.1): the JPEG process of the file.
_JPEG_PROCESSES = {
    0xC0: 'baseline', 0xC1: 'extended sequential', 0xC2: 'progressive', 0xC3: 'lossless',
    0xC5: 'hierarchical sequential', 0xC6: 'hierarchical progressive',
    0xC7: 'hierarchical lossless', 0xC9: 'arithmetic-coded sequential',
    0xCA: 'arithmetic-coded progressive', 0xCB: 'arithmetic-coded lossless',
    0xCD: 'arithmetic-coded hierarchical sequential',
    0xCE: 'arithmetic-coded hierarchical progressive',
    0xCF: 'arithmetic-coded hierarchical lossless'}
#: Segments (and fill bytes) read before a JPEG's first scan at most: an encoder's or a
#: camera's JPEG has about ten there.
JPEG_HEADER_SEGMENTS = 64


def _jpeg_frame(data: bytes) -> Tuple[int, int, int, int]:
    """Return a JPEG's start-of-frame marker, precision, components, those of scan 1.

    Only the segments before the first scan are read (at most
    :py:data:`JPEG_HEADER_SEGMENTS`); raises :py:class:`CodecError` if they do not hold
    one frame header and then a scan header.
    """
    frame = None
    at = 2
    for _ in range(JPEG_HEADER_SEGMENTS):
        if at + 2 > len(data) or data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            at += 1 if marker == 0xFF else 2  # a fill byte; a marker without a length
            continue
        length = int.from_bytes(data[at + 2:at + 4], 'big')
        body = data[at + 4:at + 2 + length]
        if marker in (0xD8, 0xD9) or length < 2 or len(body) != length - 2:
            break
        if marker in _JPEG_PROCESSES:
            if frame is not None or len(body) < 6:
                break
            frame = (marker, body[0], body[5])
        elif marker == 0xDA:
            if frame is None or not body:
                break
            return frame + (body[0],)
        at += 2 + length
    raise CodecError('JPEG without a frame header and a scan header in its first {0} '
                     'segments'.format(JPEG_HEADER_SEGMENTS))


def check_jpeg(payload: BytesLike, width: int, height: int) -> None:
    """Raise :py:class:`CodecError` unless *payload* is a whole JPEG of *width* x *height*.

    Nothing is decoded (a few microseconds): a receiver checks what it will decode before
    decoding it, as a forged header may claim any size. Whole: past the header lies
    entropy-coded data, where 0xFF is always followed by 0x00 or a restart marker, so an
    end-of-image marker (FF D9) within the last :py:data:`JPEG_TAIL_BYTES` means nothing
    was cut off. And decoded in one pass over the image, as the protocol's baseline JPEG
    is: sequential and Huffman-coded (SOF0 or SOF1), 8-bit, every component in its first
    scan (so that a second scan is an error at once). A progressive JPEG, or one whose
    components come in scans of their own, is decoded scan by scan, over the whole image
    each time: the header cannot bound its cost (a 640 KB one of 50000 scans took 7.8 s
    to decode at 1920 x 1080). Greyscale (one component) and CMYK are taken: they decode
    to BGR. Damaged data between a good header and end is only found by decoding.
    """
    data = payload if isinstance(payload, bytes) else bytes(payload)
    size = jpeg_size(data)
    if size != (width, height):
        raise CodecError('JPEG is {0}x{1}, the frame header says {2}x{3}'.format(
            size[0], size[1], width, height))
    if data.rfind(b'\xff\xd9', max(0, len(data) - JPEG_TAIL_BYTES)) < 0:
        raise CodecError('JPEG of {0} bytes has no end-of-image marker: truncated'.format(
            len(data)))
    marker, precision, components, scanned = _jpeg_frame(data)
    if marker not in (0xC0, 0xC1):
        raise CodecError('{0} JPEG (SOF{1}): only baseline (sequential, Huffman-coded) JPEG '
                         'is taken'.format(_JPEG_PROCESSES[marker], marker - 0xC0))
    if precision != 8:
        raise CodecError('JPEG of {0}-bit samples: only 8-bit JPEG is taken'.format(
            precision))
    if scanned != components:
        raise CodecError('JPEG whose first scan holds {0} of its {1} components: only JPEG '
                         'of one scan is taken'.format(scanned, components))


def halve_bgrx(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Return *pixels* (height, width, 3 or 4 uint8) at half the size, 2 x 2 box mean.

    For the colour stream's "qhd" mode (1920 x 1080 -> 960 x 540): a box mean, not every
    other pixel, which aliases (measured: 9 dB worse and 8 % more JPEG bytes). Each output
    pixel is ``(a + b + c + d + 2) >> 2`` of its four inputs; an odd last row or column is
    left out. OpenCV's area resampling computes exactly that, 4 times as fast as Pillow's
    ``reduce(2)``, used before (bench/bench_streams.py, its qhd table).
    """
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise ValueError('expected (height, width, 3 or 4) uint8 pixels, got {0} {1}'.format(
            pixels.dtype, pixels.shape))
    height, width = pixels.shape[0] // 2, pixels.shape[1] // 2
    if not height or not width:
        raise ValueError('cannot halve a {0}x{1} image'.format(
            pixels.shape[1], pixels.shape[0]))
    import cv2
    halved = cv2.resize(pixels[:2 * height, :2 * width], (width, height),
                        interpolation=cv2.INTER_AREA)
    return np.asarray(halved, np.uint8)
