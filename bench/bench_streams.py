"""Choose the IR codec and the colour JPEG library by measurement on real Kinect v2 frames.

Runs by itself: ``python bench/bench_streams.py [--data FILE] [--depth DIR] [--repeat N]``.
Groundwork for colour and IR streams (issue 10). It prints, from one run, single-threaded
medians (``time.perf_counter``) of:

1. **IR codecs** on the 9 real IR frames of ``kinect2_sync_rgbd.npz`` (512 x 424 ``uint16``
   amplitude; default ``<repo>/../shared/data/rgbd/``): ratio, Mbit/s at 30 fps, encode and
   decode ms, byte-exact round trip. Candidates: ``grad-zstd`` (our depth codec,
   :py:mod:`streamkinect2.codec`), JPEG-LS (CharLS), lossless JPEG XL at efforts 1-3
   (libjxl), reversible HTJ2K (OpenJPH) and JPEG 2000 (OpenJPEG), lossless JPEG (ITU T.81
   process 14, libjpeg-turbo 3, predictors 1, 2 and 6), LERC (maximum error 0), pcodec (all
   through imagecodecs), 16-bit PNG (Pillow) and unpredicted byte planes with zstd or LZ4.
   QOI, WebP and AVIF are left out: none is lossless for 16-bit samples. The same candidates
   then run on the depth frames (``depth`` of the same file and the sets in ``--depth``,
   default ``<repo>/../shared/data/depth/``), to show whether one codec could serve both.
2. **Colour JPEG** of 1920 x 1080 BGRX frames as the Kinect delivers them (4 bytes a pixel,
   X = 0), 4:2:0, qualities 75, 90, 95, with simplejpeg, PyTurboJPEG, OpenCV
   (``cv2.imencode``), Pillow and imagecodecs' libjpeg-turbo (``jpeg8``): KiB and Mbit/s at
   30 fps, encode ms from BGRX, decode ms to BGR and to greyscale (the client's side), PSNR
   of the decoded BGR against the input. Two image sets: ``grey``, the real captures (the
   recorder saved colour as greyscale; B = G = R, so chroma is flat and costs almost
   nothing), and ``tinted``, a synthetic-but-natural colour image made from the same
   captures by a mild per-channel gamma and gain that drift across the frame (chroma that
   follows the luma, as in a real scene, but no chroma edges of its own: real colour
   frames will be somewhat larger).
3. **Input and header**: encode ms from BGRX against from contiguous 3-channel BGR (does the
   library take BGRX as it is?), the cost of reading width and height from the header
   only (a client that forwards JPEG) and of decoding at half size with libjpeg-turbo's DCT
   scaling (the only scaling it offers: the TurboJPEG API scales when decompressing, never
   when compressing).
4. **qhd (960 x 540)**: downscale then encode (with simplejpeg, else the first library
   installed): ``cv2.resize`` INTER_AREA (the 2 x 2 box mean), INTER_LINEAR,
   INTER_NEAREST (every other pixel, done by OpenCV), every other pixel by numpy slicing
   copied to a contiguous array, Pillow's ``Image.reduce(2)`` (a box mean) and a box mean
   in numpy; PSNR of the decoded frame against the exact 2 x 2 box mean of the 1080p input
   (so aliasing counts as error).

The frames are the sensor's: the colour captures went through the Kinect's own JPEG (at
about q90 on the same 8 x 8 grid), as pylibfreenect2's BGRX frames do, so the JPEG sizes are
those of re-encoding what the server is handed. Needs the project's bench extras; the
candidates: ``pip install imagecodecs simplejpeg opencv-python-headless PyTurboJPEG``
(PyTurboJPEG 2 needs a system libjpeg-turbo 3; with 2.x, e.g. Debian 12's
``libturbojpeg0``, use ``PyTurboJPEG<2``).

A candidate whose package is not installed, or that fails, is reported on a line of its own
and skipped. OpenCV is limited to one thread; libjxl and OpenJPEG are asked for one.
"""
import argparse
import ctypes.util
import glob
import importlib
import io
import os
import struct
import sys
import time

import bench_codecs
import lz4.frame
import numpy as np
import PIL
from PIL import Image
import zstandard

REPO = bench_codecs.REPO
DEFAULT_DATA = os.path.normpath(os.path.join(
    REPO, '..', 'shared', 'data', 'rgbd', 'kinect2_sync_rgbd.npz'))
DEFAULT_DEPTH = bench_codecs.DEFAULT_DATA

FPS = 30
QUALITIES = (75, 90, 95)
QHD = (960, 540)


def _optional(name):
    """Return (module, None), or (None, why) when *name* cannot be imported."""
    try:
        return importlib.import_module(name), None
    except Exception as e:     # ImportError, or a binding that fails to load its library
        return None, '{0}: {1}'.format(type(e).__name__, str(e).split('\n')[0])


def _mbits(nbytes_per_frame):
    return nbytes_per_frame * 8 * FPS / 1e6


def _median_ms(samples):
    return 1e3 * float(np.median(samples))


def _nbytes(payload):
    return memoryview(payload).nbytes


def _psnr(a, b):
    d = a.astype(np.float32) - b
    mse = float(np.mean(d * d))
    return float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# --- IR codecs ----------------------------------------------------------------------------

def _shaped(decode):
    """Wrap a decoder of payload -> array as decode(payload, width, height)."""
    return lambda p, w, h: np.asarray(decode(p)).reshape(h, w)


def _planes_codec(compress, decompress):
    """Unpredicted byte planes (low bytes, then high bytes) through a general compressor."""
    def encode(x):
        return compress(bench_codecs._planes(x.ravel()).tobytes())

    def decode(p, w, h):
        planes = np.frombuffer(decompress(p), np.uint8)
        return bench_codecs._unplanes(planes, w * h).reshape(h, w)
    return encode, decode


def ir_codecs():
    """Return [(name, encode(x), decode(payload, width, height)) or (name, None, why)]."""
    codec = bench_codecs._import_codec()
    ours = codec.CODEC_GRAD_ZSTD
    table = [('grad-zstd (ours)', lambda x: codec.encode(x, ours),
              lambda p, w, h: codec.decode(p, w, h, ours))]
    ic, why = _optional('imagecodecs')
    if ic is None:
        table.append(('imagecodecs candidates', None, why))
    else:
        def jxl(effort):
            return ('jpeg-xl lossless e{0}'.format(effort),
                    lambda x: ic.jpegxl_encode(x, lossless=True, effort=effort, numthreads=1),
                    _shaped(lambda p: ic.jpegxl_decode(p, numthreads=1)))

        def ljpeg(predictor):
            return ('lossless jpeg p{0} (turbo)'.format(predictor),
                    lambda x: ic.jpeg8_encode(x, lossless=True, predictor=predictor),
                    _shaped(ic.jpeg8_decode))
        table += [
            ('jpeg-ls (charls)', ic.jpegls_encode, _shaped(ic.jpegls_decode)),
            jxl(1), jxl(2), jxl(3),
            ('htj2k reversible (openjph)', lambda x: ic.htj2k_encode(x, reversible=True),
             _shaped(ic.htj2k_decode)),
            ('jpeg2000 reversible (openjpeg)',
             lambda x: ic.jpeg2k_encode(x, level=0, reversible=True, numthreads=1),
             _shaped(lambda p: ic.jpeg2k_decode(p, numthreads=1))),
            ljpeg(1), ljpeg(2), ljpeg(6),
            ('lerc max error 0', lambda x: ic.lerc_encode(x, level=0.0),
             _shaped(ic.lerc_decode)),
            ('pcodec', ic.pcodec_encode,
             lambda p, w, h: ic.pcodec_decode(p, shape=(h, w), dtype=np.uint16)),
        ]
    z1 = zstandard.ZstdCompressor(level=1)
    z3 = zstandard.ZstdCompressor(level=3)
    dz = zstandard.ZstdDecompressor()
    table += [
        ('png-1 (Pillow)', bench_codecs.png_encoder(1), bench_codecs.png_decode),
        ('png-3 (Pillow)', bench_codecs.png_encoder(3), bench_codecs.png_decode),
        ('byte planes + zstd-1',) + _planes_codec(z1.compress, dz.decompress),
        ('byte planes + zstd-3',) + _planes_codec(z3.compress, dz.decompress),
        ('byte planes + lz4',) + _planes_codec(lz4.frame.compress, lz4.frame.decompress),
    ]
    return table


def print_ir_table(title, frames, repeat, table):
    """Measure every codec of *table* on *frames* (N x H x W uint16) and print one table."""
    print('\n{0}: {1} frames of {3} x {2} uint16, raw {4:.1f} Mbit/s at {5} fps'.format(
        title, *frames.shape, _mbits(frames[0].nbytes), FPS))
    print('  {0:32s} {1:>6s} {2:>7s} {3:>7s} {4:>7s} {5:>7s}  {6}'.format(
        'codec', 'ratio', 'Mbit/s', 'enc ms', 'dec ms', 'sum ms', 'lossless'))
    for entry in table:
        name = entry[0]
        if entry[1] is None:
            print('  {0:32s} skipped: {1}'.format(name, entry[2]))
            continue
        try:
            ratio, t_enc, t_dec, wrong = bench_codecs.bench_set(frames, repeat, [entry])[name]
        except Exception as e:
            print('  {0:32s} failed: {1}: {2}'.format(name, type(e).__name__, e))
            continue
        lossless = 'yes' if wrong == 0 else 'NO ({0:.1f} % of pixels wrong)'.format(
            100 * wrong)
        print('  {0:32s} {1:6.3f} {2:7.1f} {3:7.2f} {4:7.2f} {5:7.2f}  {6}'.format(
            name, ratio, _mbits(frames[0].nbytes / ratio), t_enc, t_dec, t_enc + t_dec,
            lossless))


# --- colour: test frames --------------------------------------------------------------------

def grey_bgrx(grey):
    """Return BGRX frames (N x H x W x 4 uint8, X = 0) with B = G = R = *grey*."""
    out = np.zeros(grey.shape + (4,), np.uint8)
    for c in range(3):
        out[..., c] = grey
    return out


def tinted_bgrx(grey):
    """Return synthetic colour BGRX frames from *grey*: a mild, drifting per-channel tint.

    Red gets gamma 0.9 and a gain from 0.9 (left) to 1.1 (right); blue gamma 1.1, a gain
    from 1.1 to 0.9 and 10 % less towards the bottom; green is the grey. Chroma thus
    follows the scene's luma, as it does in a real room, without edges of its own.
    """
    n, h, w = grey.shape
    u = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    v = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    out = np.zeros((n, h, w, 4), np.uint8)
    for i, g in enumerate(grey):
        s = g.astype(np.float32) / 255
        red = 255 * s ** 0.9 * (0.9 + 0.2 * u)
        blue = 255 * s ** 1.1 * (1.1 - 0.2 * u) * (1.0 - 0.1 * v)
        out[i, ..., 0] = np.clip(blue + 0.5, 0, 255)
        out[i, ..., 1] = g
        out[i, ..., 2] = np.clip(red + 0.5, 0, 255)
    return out


# --- colour: JPEG libraries -----------------------------------------------------------------

_SOF = frozenset(range(0xc0, 0xd0)) - {0xc4, 0xc8, 0xcc}


def jpeg_size(data):
    """Return (width, height) from the SOF marker of JPEG *data*, decoding nothing else."""
    mv = memoryview(data)
    if bytes(mv[:2]) != b'\xff\xd8':
        raise ValueError('not a JPEG: no SOI marker')
    i, end = 2, len(mv)
    while i + 4 <= end:
        if mv[i] != 0xff:
            raise ValueError('no marker at byte {0}'.format(i))
        m = mv[i + 1]
        if m == 0xff:                           # fill byte
            i += 1
            continue
        if m == 0x01 or 0xd0 <= m <= 0xd7:      # markers without a length
            i += 2
            continue
        if m in _SOF and i + 9 <= end:
            height, width = struct.unpack_from('>HH', mv, i + 5)
            return width, height
        if m in (0xd9, 0xda):                   # EOI or SOS before any SOF
            break
        i += 2 + struct.unpack_from('>H', mv, i + 2)[0]
    raise ValueError('no SOF marker')


class JpegLib:
    """One JPEG binding: how it encodes BGRX and decodes, or why it is not available."""

    def __init__(self, name, version='', note='', why=None):
        self.name, self.version, self.note, self.why = name, version, note, why
        self.encode = self.encode_bgr = self.decode_bgr = self.decode_gray = None
        self.decode_half = self.header = None


def jpeg_libs():
    """Return the JPEG libraries to compare, each a :py:class:`JpegLib`."""
    libs = []

    sj, why = _optional('simplejpeg')
    lib = JpegLib('simplejpeg', getattr(sj, '__version__', ''),
                  "colorspace='BGRX', rows with any pitch", why)
    if sj is not None:
        lib.encode = lambda x, q: sj.encode_jpeg(x, q, 'BGRX', '420')
        lib.encode_bgr = lambda x, q: sj.encode_jpeg(x, q, 'BGR', '420')
        lib.decode_bgr = lambda b: sj.decode_jpeg(b, 'BGR')
        lib.decode_gray = lambda b: sj.decode_jpeg(b, 'GRAY')
        lib.decode_half = lambda b: sj.decode_jpeg(b, 'BGR', min_width=QHD[0],
                                                   min_height=QHD[1])
        lib.header = lambda b: sj.decode_jpeg_header(b)[1::-1]
    libs.append(lib)

    tjm, why = _optional('turbojpeg')
    lib = JpegLib('PyTurboJPEG', getattr(tjm, '__version__', ''), 'TJPF_BGRX', why)
    if tjm is not None:
        try:
            tj = tjm.TurboJPEG()
        except Exception as e:
            lib.why = 'TurboJPEG(): {0}: {1}'.format(type(e).__name__, str(e).split('\n')[0])
        else:
            path = ctypes.util.find_library('turbojpeg')
            lib.version += ' (system {0})'.format(path)
            sub = tjm.TJSAMP_420
            lib.encode = lambda x, q: tj.encode(x, q, tjm.TJPF_BGRX, sub)
            lib.encode_bgr = lambda x, q: tj.encode(x, q, tjm.TJPF_BGR, sub)
            lib.decode_bgr = lambda b: tj.decode(b, tjm.TJPF_BGR)
            lib.decode_gray = lambda b: tj.decode(b, tjm.TJPF_GRAY)
            lib.decode_half = lambda b: tj.decode(b, tjm.TJPF_BGR, scaling_factor=(1, 2))
            lib.header = lambda b: tj.decode_header(b)[:2]
    libs.append(lib)

    cv2, why = _optional('cv2')
    lib = JpegLib('opencv cv2.imencode', getattr(cv2, '__version__', ''),
                  '4 channels taken, converted to BGR row by row', why)
    if cv2 is not None:
        cv2.setNumThreads(1)
        params = [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
        lib.encode = lambda x, q: cv2.imencode(
            '.jpg', x, [cv2.IMWRITE_JPEG_QUALITY, q] + params)[1]
        lib.encode_bgr = lib.encode
        lib.decode_bgr = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        lib.decode_gray = lambda b: cv2.imdecode(
            np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)
        lib.decode_half = lambda b: cv2.imdecode(
            np.frombuffer(b, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    libs.append(lib)

    def pil_encode(x, q, raw):
        buf = io.BytesIO()
        Image.frombuffer('RGB', (x.shape[1], x.shape[0]), x, 'raw', raw, 0, 1).save(
            buf, 'JPEG', quality=q, subsampling='4:2:0')
        return buf.getvalue()

    def pil_decode(b, mode, size=None):
        im = Image.open(io.BytesIO(b))
        if size or mode == 'L':
            im.draft(mode if mode == 'L' else 'RGB', size or im.size)
        if mode == 'L':
            return np.asarray(im)
        return np.frombuffer(im.tobytes('raw', 'BGR'), np.uint8).reshape(
            im.size[1], im.size[0], 3)

    lib = JpegLib('Pillow', PIL.__version__, "raw mode 'BGRX' unpacked into its own buffer")
    lib.encode = lambda x, q: pil_encode(x, q, 'BGRX')
    lib.encode_bgr = lambda x, q: pil_encode(x, q, 'BGR')
    lib.decode_bgr = lambda b: pil_decode(b, 'BGR')
    lib.decode_gray = lambda b: pil_decode(b, 'L')
    lib.decode_half = lambda b: pil_decode(b, 'BGR', (QHD[0], QHD[1]))
    lib.header = lambda b: Image.open(io.BytesIO(b)).size
    libs.append(lib)

    ic, why = _optional('imagecodecs')
    lib = JpegLib('imagecodecs jpeg8', getattr(ic, '__version__', ''),
                  'colorspace=EXT_BGRX', why)
    if ic is not None:
        cs = ic.JPEG8.CS
        lib.encode = lambda x, q: ic.jpeg8_encode(
            x, q, colorspace=cs.EXT_BGRX, outcolorspace=cs.YCbCr, subsampling='420')
        lib.encode_bgr = lambda x, q: ic.jpeg8_encode(
            x, q, colorspace=cs.EXT_BGR, outcolorspace=cs.YCbCr, subsampling='420')
        lib.decode_bgr = lambda b: ic.jpeg8_decode(b, outcolorspace=cs.EXT_BGR)
        lib.decode_gray = lambda b: ic.jpeg8_decode(b, outcolorspace=cs.GRAYSCALE)
    libs.append(lib)
    return libs


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def measure_jpeg(lib, frames, quality, repeat, decode=True):
    """Return (bytes per frame, enc ms, dec BGR ms, dec grey ms, PSNR dB) medians."""
    payloads = [lib.encode(x, quality) for x in frames]          # also the warm-up
    size = np.mean([_nbytes(p) for p in payloads])
    psnr = np.median([_psnr(lib.decode_bgr(p), x[..., :3]) for p, x in zip(payloads, frames)])
    t_enc, t_bgr, t_gray = [], [], []
    for _ in range(repeat):
        for x, p in zip(frames, payloads):
            t_enc.append(_timed(lib.encode, x, quality)[1])
            if decode:
                t_bgr.append(_timed(lib.decode_bgr, p)[1])
                t_gray.append(_timed(lib.decode_gray, p)[1])
    return (size, _median_ms(t_enc), _median_ms(t_bgr) if decode else None,
            _median_ms(t_gray) if decode else None, psnr)


def print_jpeg_table(title, frames, repeat, libs):
    """Print the library x quality table for BGRX *frames*."""
    print('\nColour JPEG, {0}: {1} frames of {3} x {2} BGRX, 4:2:0'.format(
        title, *frames.shape[:3]))
    print('  {0:22s} {1:>3s} {2:>7s} {3:>7s} {4:>7s} {5:>8s} {6:>8s} {7:>6s}'.format(
        'library', 'q', 'KiB', 'Mbit/s', 'enc ms', 'dec bgr', 'dec grey', 'PSNR'))
    for lib in libs:
        if lib.encode is None:
            print('  {0:22s} skipped: {1}'.format(lib.name, lib.why))
            continue
        for q in QUALITIES:
            try:
                size, t_enc, t_bgr, t_gray, psnr = measure_jpeg(lib, frames, q, repeat)
            except Exception as e:
                print('  {0:22s} {1:3d} failed: {2}: {3}'.format(lib.name, q,
                                                                 type(e).__name__, e))
                continue
            print('  {0:22s} {1:3d} {2:7.1f} {3:7.1f} {4:7.2f} {5:8.2f} {6:8.2f} {7:6.2f}'
                  .format(lib.name, q, size / 1024, _mbits(size), t_enc, t_bgr, t_gray, psnr))
    print('  PSNR: decoded BGR against the input. The captures went through JPEG at about q90\n'
          "  on the same 8 x 8 grid (the sensor's own), so re-encoding near q90 almost restores\n"
          '  them and PSNR peaks there (a 4-pixel shift removes the peak). It does not rank the\n'
          '  libraries: all are libjpeg-turbo.')


def _us_per_call(fn, arg, calls=200):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(arg)
    return 1e6 * (time.perf_counter() - t0) / calls


def print_input_table(frames, repeat, libs, quality=90):
    """Print BGRX against BGR input, header-only cost and half-size decode per library."""
    bgr = [np.ascontiguousarray(x[..., :3]) for x in frames]
    print('\nInput and header (grey frames, q{0}, 1920 x 1080)'.format(quality))
    print('  {0:22s} {1:>8s} {2:>8s} {3:>10s} {4:>9s}  {5}'.format(
        'library', 'enc BGRX', 'enc BGR', 'header us', 'dec 1/2', 'BGRX input'))
    for lib in libs:
        if lib.encode is None:
            continue
        t_x, t_3, t_half = [], [], []
        for _ in range(repeat):
            for x, x3 in zip(frames, bgr):
                t_x.append(_timed(lib.encode, x, quality)[1])
                t_3.append(_timed(lib.encode_bgr, x3, quality)[1])
        payload = lib.encode(frames[0], quality)
        size = (frames.shape[2], frames.shape[1])
        header = half = '-'
        if lib.header is not None:
            got = tuple(int(v) for v in lib.header(payload))
            header = '{0:.1f}'.format(_us_per_call(lib.header, payload)) if got == size \
                else 'WRONG {0}'.format(got)
        if lib.decode_half is not None:
            shape = lib.decode_half(payload).shape
            for _ in range(repeat):
                for x in frames[:3]:
                    t_half.append(_timed(lib.decode_half, payload)[1])
            half = '{0:.2f}'.format(_median_ms(t_half)) if shape[:2] == QHD[::-1] \
                else 'shape {0}'.format(shape)
        print('  {0:22s} {1:8.2f} {2:8.2f} {3:>10s} {4:>9s}  {5}'.format(
            lib.name, _median_ms(t_x), _median_ms(t_3), header, half, lib.note))
    payload = next(lib for lib in libs if lib.encode is not None).encode(frames[0], quality)
    assert jpeg_size(payload) == (frames.shape[2], frames.shape[1])
    print('  {0:22s} {1:>8s} {2:>8s} {3:10.1f} {4:>9s}  {5}'.format(
        'no library: SOF scan', '-', '-', _us_per_call(jpeg_size, payload), '-',
        'bench_streams.jpeg_size, pure Python'))


def box_mean(x):
    """Return the exact 2 x 2 box mean of *x* (H x W x C) as float32."""
    h, w, c = x.shape
    return x.reshape(h // 2, 2, w // 2, 2, c).astype(np.float32).mean(axis=(1, 3))


def downscalers():
    """Return [(name, f(bgrx) -> contiguous half-size BGRX) or (name, None, why)]."""
    out = []
    cv2, why = _optional('cv2')
    for flag in ('INTER_AREA', 'INTER_LINEAR', 'INTER_NEAREST'):
        name = 'cv2.resize {0}'.format(flag)
        if cv2 is None:
            out.append((name, None, why))
        else:
            out.append((name, lambda x, f=getattr(cv2, flag): cv2.resize(x, QHD, interpolation=f)))
    out.append(('x[::2, ::2] copied', lambda x: np.ascontiguousarray(x[::2, ::2])))
    out.append(('Pillow reduce(2)', pil_reduce2))
    out.append(('numpy 2x2 mean', numpy_box2))
    return out


def pil_reduce2(x):
    """Halve BGRX *x* with Pillow's 2 x 2 box reduction (Pillow reads *x* in place)."""
    h, w = x.shape[:2]
    im = Image.frombuffer('RGBX', (w, h), x, 'raw', 'RGBX', 0, 1).reduce(2)
    return np.asarray(im)


def numpy_box2(x):
    """Halve *x* with a rounded 2 x 2 box mean in numpy."""
    s = x[0::2, 0::2].astype(np.uint16)
    s += x[1::2, 0::2]
    s += x[0::2, 1::2]
    s += x[1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


def print_qhd_table(title, frames, repeat, lib):
    """Print downscale + encode to 960 x 540 for each downscaler, with *lib*."""
    print('\nqhd 960 x 540 from 1080p {0} frames, encoded with {1}'.format(title, lib.name))
    print('  {0:26s} {1:>3s} {2:>8s} {3:>7s} {4:>7s} {5:>7s} {6:>7s} {7:>8s} {8:>6s}'.format(
        'downscale', 'q', 'scale ms', 'enc ms', 'sum ms', 'KiB', 'Mbit/s', 'dec bgr',
        'PSNR*'))
    refs = [box_mean(x[..., :3]) for x in frames]
    rows = [(d, 90) for d in downscalers()]
    if rows[0][0][1] is not None:
        rows[1:1] = [(rows[0][0], 75), (rows[0][0], 95)]
    for entry, q in rows:
        name = entry[0]
        if entry[1] is None:
            print('  {0:26s} skipped: {1}'.format(name, entry[2]))
            continue
        scale = entry[1]
        small = [scale(x) for x in frames]
        t_scale = []
        for _ in range(repeat):
            for x in frames:
                t_scale.append(_timed(scale, x)[1])
        size, t_enc, t_bgr, _, _ = measure_jpeg(lib, small, q, repeat)
        psnr = np.median([_psnr(lib.decode_bgr(lib.encode(s, q)), r)
                          for s, r in zip(small, refs)])
        ms = _median_ms(t_scale)
        print('  {0:26s} {1:3d} {2:8.2f} {3:7.2f} {4:7.2f} {5:7.1f} {6:7.1f} {7:8.2f} {8:6.2f}'
              .format(name, q, ms, t_enc, ms + t_enc, size / 1024, _mbits(size), t_bgr, psnr))
    print('  * PSNR of the decoded qhd frame against the exact 2 x 2 box mean of the input.')


# --- main ---------------------------------------------------------------------------------

def print_versions(libs):
    """Print the versions of everything measured."""
    ic, _ = _optional('imagecodecs')
    print('numpy {0}, zstandard {1} (libzstd {2}), lz4 {3}, Pillow {4}; Python {5}'.format(
        np.__version__, zstandard.__version__, zstandard.ZSTD_VERSION,
        lz4.library_version_string(), PIL.__version__, sys.version.split()[0]))
    if ic is not None:
        wanted = ('charls', 'libjxl', 'openjph', 'openjpeg', 'libjpeg_turbo', 'lerc', 'pcodec')
        parts = [p.strip() for p in ic.version().split(',')]
        print('imagecodecs: ' + ', '.join(
            p for p in parts if p.startswith(wanted) or p.startswith('imagecodecs')))
    for lib in libs:
        state = 'not available: {0}'.format(lib.why) if lib.encode is None else lib.version
        print('{0}: {1}'.format(lib.name, state))


def main(argv=None):
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default=DEFAULT_DATA,
                        help='synchronised RGB-D set (default: %(default)s)')
    parser.add_argument('--depth', default=DEFAULT_DEPTH,
                        help='directory of .npz depth sets, "" for none (default: %(default)s)')
    parser.add_argument('--repeat', type=int, default=2,
                        help='timing passes over each set (default: %(default)s)')
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    sets = np.load(args.data)
    libs = jpeg_libs()
    print_versions(libs)
    print('Single thread, medians; Mbit/s at {0} fps.'.format(FPS))

    table = ir_codecs()
    print_ir_table('IR (kinect2_sync_rgbd ir)', sets['ir'], args.repeat, table)
    print_ir_table('depth (kinect2_sync_rgbd depth)', sets['depth'], args.repeat, table)
    for path in sorted(glob.glob(os.path.join(args.depth, '*.npz'))) if args.depth else []:
        name = os.path.splitext(os.path.basename(path))[0]
        print_ir_table('depth ({0})'.format(name), np.load(path)['frames'], args.repeat, table)

    grey = grey_bgrx(sets['color'])
    tinted = tinted_bgrx(sets['color'])
    for title, frames in (('grey (real captures)', grey),
                          ('tinted (synthetic colour from the captures)', tinted)):
        print_jpeg_table(title, frames, args.repeat, libs)
    print_input_table(grey, args.repeat, libs)
    usable = [lib for lib in libs if lib.encode is not None]
    for title, frames in (('grey', grey), ('tinted', tinted)):
        print_qhd_table(title, frames, args.repeat, usable[0])
    print('\nTotal run time {0:.0f} s.'.format(time.perf_counter() - t0))
    return 0


if __name__ == '__main__':
    sys.exit(main())
