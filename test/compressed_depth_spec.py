"""A ``compressedDepth`` decoder written from image_transport_plugins' source, for the tests.

Independent of :py:mod:`streamkinect2_ros.compressed_depth` (it imports nothing from it),
so a round trip through it checks the encoder against the plugin, not against itself.
Transcribed from ros-perception/image_transport_plugins,
``compressed_depth_image_transport``, branch ``rolling``, commit
7404d772b66f586f5f56e568671ae20e8a64bc7e:

* ``src/codec.cpp``, ``decodeCompressedDepthImage``: the codec from ``format`` (the
  text after the first ``;``: ``compressedDepth png`` -> PNG, ``compressedDepth rvl`` ->
  RVL, ``compressedDepth`` followed by no space -> PNG, no ``;`` at all -> PNG, anything
  else refused); the image encoding is the text before the ``;``; ``data`` must be
  longer than ``sizeof(ConfigHeader)``; the header is ``memcpy``'d from its start; the
  rest is a PNG for ``cv::imdecode(..., IMREAD_UNCHANGED)``, or ``uint32 cols``,
  ``uint32 rows`` then the RVL stream of ``cols * rows`` pixels.
* ``include/compressed_depth_image_transport/compression_common.h``: ``struct
  ConfigHeader {compressionFormat format; float depthParam[2];}``, ``enum
  compressionFormat {UNDEFINED = -1, INV_DEPTH}``: an int and two floats, 12 bytes,
  little-endian on the machines ROS runs on.
* ``src/rvl_codec.cpp``, ``RvlCodec::DecompressRVL`` and ``DecodeVLE``, transcribed
  line by line below.

PNG: its chunks are checked as libpng checks them (CRCs, IHDR first, IEND last; 16-bit
greyscale), then the pixels come from Pillow, a decoder other than the encoder's OpenCV
(the tests also run OpenCV's ``imdecode`` as the plugin does). Only the ``16UC1`` path
(the plugin's ``bitDepth != 32`` branch) is written; ``32FC1`` is refused.

Stricter than the plugin where it would read past the end of its buffers (it checks
nothing in the 16-bit RVL path): a short or inconsistent message raises
:py:class:`SpecError` instead of reading out of bounds. It also reports how many RVL words
the stream used, so a test can check that no bytes were left over.
"""
import collections
import io
import struct
import zlib

import numpy as np
from PIL import Image

#: ``sizeof(ConfigHeader)``: int compressionFormat, float depthParam[2].
CONFIG_HEADER = struct.Struct('<iff')
#: ``compressionFormat`` values.
UNDEFINED, INV_DEPTH = -1, 0
#: Largest image the RVL path here decodes (a guard against a hostile size, as the
#: plugin's 32-bit path has: ``numPixels > std::numeric_limits<int>::max()``).
MAX_PIXELS = 2 ** 31 - 1
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

Decoded = collections.namedtuple(
    'Decoded', 'encoding codec format_value depth_quant_a depth_quant_b image rvl_words')
Decoded.__doc__ = """A decoded message: the header's fields, the image (uint16) and, for
RVL, how many 32-bit words of the stream the decoder read (None for PNG)."""


class SpecError(ValueError):
    """The plugin would not produce an image from this message."""


def codec_of(format_field):
    """Return ``(encoding, codec)`` from ``CompressedImage.format``, as the plugin reads it."""
    split_pos = format_field.find(';')
    if split_pos < 0:
        return format_field, 'png'  # "Older version ... supports only png."
    encoding = format_field[:split_pos]
    ending = format_field[split_pos:]
    if 'compressedDepth png' in ending:
        return encoding, 'png'
    if 'compressedDepth rvl' in ending:
        return encoding, 'rvl'
    if 'compressedDepth' in ending and 'compressedDepth ' not in ending:
        return encoding, 'png'
    raise SpecError('Unsupported image format: {0}'.format(format_field))


class _RvlReader:
    """``RvlCodec``'s decoding state: the words, the current word, nibbles left in it."""

    def __init__(self, buffer):
        if len(buffer) % 4:
            # DecompressRVL reads whole ints; the encoder writes whole ints.
            raise SpecError('RVL stream of {0} bytes is not whole 32-bit words'.format(
                len(buffer)))
        self.words = struct.unpack('<{0}i'.format(len(buffer) // 4), buffer)
        self.p_buffer = 0
        self.word = 0
        self.nibbles_written = 0

    def decode_vle(self):
        # int DecodeVLE(): unsigned int nibble; int value = 0, bits = 29;
        value, bits = 0, 29
        while True:
            if not self.nibbles_written:
                if self.p_buffer >= len(self.words):
                    raise SpecError('RVL stream ends in the middle of the image')
                self.word = self.words[self.p_buffer] & 0xffffffff  # load word
                self.p_buffer += 1
                self.nibbles_written = 8
            nibble = self.word & 0xf0000000
            if bits < 0:
                raise SpecError('RVL number longer than 32 bits')
            value |= ((nibble << 1) & 0xffffffff) >> bits
            self.word = (self.word << 4) & 0xffffffff
            self.nibbles_written -= 1
            bits -= 3
            if not nibble & 0x80000000:
                return value


def decompress_rvl(buffer, num_pixels):
    """Return the *num_pixels* uint16 pixels of the RVL stream *buffer*, and words read."""
    reader = _RvlReader(buffer)
    output = np.empty(num_pixels, np.uint16)
    out = 0
    previous = 0
    num_pixels_to_decode = num_pixels
    while num_pixels_to_decode:
        zeros = reader.decode_vle()  # number of zeros
        num_pixels_to_decode -= zeros
        if num_pixels_to_decode < 0:
            raise SpecError('RVL run of zeros overruns the image')
        output[out:out + zeros] = 0
        out += zeros
        nonzeros = reader.decode_vle()  # number of nonzeros
        num_pixels_to_decode -= nonzeros
        if num_pixels_to_decode < 0:
            raise SpecError('RVL run of values overruns the image')
        for _ in range(nonzeros):
            positive = reader.decode_vle()  # nonzero value
            delta = (positive >> 1) ^ -(positive & 1)
            current = (previous + delta) & 0xffff  # unsigned short
            output[out] = current
            out += 1
            previous = current
    return output, reader.p_buffer


def _png_chunks(image_data):
    """Check the PNG's chunks as libpng does (signature, lengths, CRCs, IHDR, IEND).

    Pillow alone would decode a PNG cut short after its image data; libpng, under the
    plugin's ``cv::imdecode``, refuses a chunk whose CRC does not match.
    Return IHDR's ``(width, height, bit depth, colour type)``.
    """
    if image_data[:8] != PNG_SIGNATURE:
        raise SpecError('no PNG signature')
    position, types, ihdr = 8, [], None
    while position < len(image_data):
        if len(image_data) - position < 12:
            raise SpecError('PNG chunk cut short at byte {0}'.format(position))
        length, kind = struct.unpack_from('>I4s', image_data, position)
        end = position + 12 + length
        if length > 2 ** 31 - 1 or end > len(image_data):
            raise SpecError('PNG chunk {0!r} runs past the end'.format(kind))
        body = image_data[position + 8:end - 4]
        crc, = struct.unpack_from('>I', image_data, end - 4)
        if zlib.crc32(kind + body) != crc:
            raise SpecError('PNG chunk {0!r}: CRC mismatch'.format(kind))
        if not types and kind != b'IHDR':
            raise SpecError('PNG does not start with IHDR')
        if kind == b'IHDR':
            if len(body) != 13:
                raise SpecError('PNG IHDR of {0} bytes'.format(len(body)))
            ihdr = struct.unpack_from('>IIBB', body)
        types.append(kind)
        position = end
        if kind == b'IEND':
            break
    if not types or types[-1] != b'IEND' or b'IDAT' not in types:
        raise SpecError('PNG without IDAT or IEND')
    if position != len(image_data):
        raise SpecError('{0} bytes after IEND'.format(len(image_data) - position))
    return ihdr


def _png(image_data):
    width, height, bit_depth, colour_type = _png_chunks(image_data)
    if (bit_depth, colour_type) != (16, 0):
        raise SpecError('PNG is {0}-bit colour type {1}, not 16-bit greyscale'.format(
            bit_depth, colour_type))
    try:
        with Image.open(io.BytesIO(image_data)) as png:
            png.load()
            mode = png.mode
            pixels = np.asarray(png)
    except (OSError, SyntaxError, ValueError, struct.error) as error:  # Pillow's errors
        raise SpecError('PNG does not decode: {0}'.format(error)) from error
    # 16-bit greyscale: Pillow says I;16 (I;16B by some versions, I for older ones).
    if mode not in ('I;16', 'I;16B', 'I;16L', 'I') or pixels.shape != (height, width):
        raise SpecError('Pillow read a {0} {1} image from a 16-bit greyscale {2}x{3} '
                        'PNG'.format(mode, pixels.shape, width, height))
    if pixels.min() < 0 or pixels.max() > 0xffff:
        raise SpecError('PNG pixels do not fit 16UC1')
    return pixels.astype(np.uint16)


def decode(format_field, data):
    """Decode a ``compressedDepth`` message (its ``format`` and ``data``) to :py:class:`Decoded`.

    Raises :py:class:`SpecError` where the plugin returns no image, and where it would
    read outside the message.
    """
    encoding, codec = codec_of(format_field)
    if encoding not in ('16UC1', 'mono16'):
        raise SpecError('only the 16-bit path is written here, not {0!r}'.format(encoding))
    data = bytes(data)
    if not len(data) > CONFIG_HEADER.size:
        raise SpecError('{0} bytes: no more than the {1}-byte ConfigHeader'.format(
            len(data), CONFIG_HEADER.size))
    format_value, quant_a, quant_b = CONFIG_HEADER.unpack_from(data)
    image_data = data[CONFIG_HEADER.size:]
    words = None
    if codec == 'png':
        image = _png(image_data)
    else:
        if len(image_data) < 8:
            raise SpecError('RVL data of {0} bytes has no cols and rows'.format(
                len(image_data)))
        cols, rows = struct.unpack_from('<II', image_data)
        if rows == 0 or cols == 0:
            raise SpecError('RVL image size {0}x{1} contains zero'.format(cols, rows))
        if rows * cols > MAX_PIXELS:
            raise SpecError('RVL image size {0}x{1} is too large'.format(cols, rows))
        pixels, words = decompress_rvl(image_data[8:], rows * cols)
        image = pixels.reshape(rows, cols)
    if image.size == 0:
        raise SpecError('empty image')
    return Decoded(encoding, codec, format_value, quant_a, quant_b, image, words)


def passes_32bit_size_check(data):
    """Return True if the 32FC1 path's RVL check would let *data* (the message's) through.

    ``numPixels > imageData.size() * 5`` is refused there ("the best compression ratio
    is 4x"); the 16UC1 path has no such check at the commit read.
    """
    image_data = bytes(data)[CONFIG_HEADER.size:]
    cols, rows = struct.unpack_from('<II', image_data)
    return rows * cols <= len(image_data) * 5
