"""Compare depth frame codecs on real frames: ratio, encode and decode time, losslessness.

Runs by itself: ``python bench/bench_codecs.py [--data DIR] [--repeat N]``. For every
``.npz`` frame set in *DIR* (default ``<repo>/../shared/data/depth``; each holds ``frames``,
N x H x W ``uint16``) it prints one table, then whether the codec goals are met: ratio at
least 3.2 on the Kinect v2 set, encode + decode at most 2 ms for a 512 x 424 frame, and a
ratio no worse than PNG level 1 on every set.

Codecs: ``grad-zstd`` (ours, :py:mod:`streamkinect2.codec`), ``raw``, the lossy 2014
streamkinect2 scheme (clipped to 12 bits, two pixels packed in three bytes, LZ4), 16-bit
greyscale PNG at zlib levels 1 and 3 (Pillow, i.e. libpng-style adaptive row filters;
pypng writes unfiltered rows and only reaches 1.9 on Kinect v2), RVL (Wilson 2017; size
only, computed exactly, not timed) and the alternatives measured while choosing ours.
Times are medians of single-threaded calls (``time.perf_counter``).
"""
import argparse
import glob
import io
import os
import sys
import time

import lz4.frame
import numpy as np
from PIL import Image
import zstandard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data', 'depth'))

GOAL_RATIO = 3.2
GOAL_MS = 2.0


def _import_codec():
    try:
        from streamkinect2 import codec
    except ImportError:
        sys.path.insert(0, REPO)
        from streamkinect2 import codec
    return codec


# --- the 2014 scheme: 12 bits, 2 pixels in 3 bytes, LZ4 (lossy above 4095 mm) -----------

def old12_encode(x):
    """Clip to 12 bits, pack two pixels into three bytes and compress with LZ4."""
    v = np.minimum(x.ravel(), 4095)
    if v.size % 2:
        v = np.append(v, np.uint16(0))
    a, b = v[0::2], v[1::2]
    packed = np.empty((a.size, 3), np.uint8)
    packed[:, 0] = a & 0xff
    packed[:, 1] = (a >> 8) | ((b & 0xf) << 4)
    packed[:, 2] = b >> 4
    return lz4.frame.compress(packed.tobytes())


def old12_decode(payload, width, height):
    """Undo :py:func:`old12_encode`."""
    p = np.frombuffer(lz4.frame.decompress(payload), np.uint8).reshape(-1, 3).astype(
        np.uint16)
    out = np.empty((p.shape[0], 2), np.uint16)
    out[:, 0] = p[:, 0] | ((p[:, 1] & 0xf) << 8)
    out[:, 1] = (p[:, 1] >> 4) | (p[:, 2] << 4)
    return out.ravel()[:width * height].reshape(height, width)


# --- PNG (Pillow) ---------------------------------------------------------------------

def png_encoder(level):
    """Return a 16-bit greyscale PNG encoder at zlib *level*."""
    def encode(x):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(x)).save(buf, format='PNG', compress_level=level)
        return buf.getvalue()
    return encode


def png_decode(payload, width, height):
    """Decode a PNG payload to a uint16 array."""
    return np.asarray(Image.open(io.BytesIO(payload))).astype(np.uint16)


# --- RVL (Wilson 2017): exact size, computed without building the stream ----------------

def _vle_nibbles(values):
    """Return the number of 4-bit groups (3 data bits each) RVL spends on each value."""
    bits = np.frexp(values.astype(np.float64))[1]
    return np.maximum(1, (bits + 2) // 3)


def rvl_size(x):
    """Return the size in bytes of the RVL encoding of *x* (nibbles in 32-bit words)."""
    f = x.ravel()
    nonzero = f != 0
    edges = np.flatnonzero(np.diff(nonzero.astype(np.int8))) + 1
    runs = np.diff(np.concatenate(([0], edges, [f.size])))
    if nonzero[0]:
        runs = np.concatenate(([0], runs))      # runs alternate, zeros first
    if runs.size % 2:
        runs = np.append(runs, 0)               # trailing zeros: an empty non-zero run
    v = f[nonzero].astype(np.int64)
    d = np.diff(v, prepend=0)
    zz = (d << 1) ^ (d >> 63)
    nibbles = int(_vle_nibbles(runs).sum() + _vle_nibbles(zz).sum())
    return (nibbles + 7) // 8 * 4


# --- alternatives measured while choosing grad-zstd -----------------------------------

def _planes(z):
    return np.concatenate([(z & 0xff).astype(np.uint8), (z >> 8).astype(np.uint8)])


def _unplanes(p, n):
    return (p[n:2 * n].astype(np.uint16) << 8) | p[:n]


def _zigzag(g):
    s = g.view(np.int16)
    return ((s << 1) ^ (s >> 15)).view(np.uint16)


def _unzigzag(z):
    return (z >> 1) ^ (-(z & 1)).astype(np.uint16)


def alt_encoder(grad, level):
    """Delta (horizontal, or gradient if *grad*), zigzag, byte planes, zstd *level*.

    No hole filling and no mask: what grad-zstd adds is measured against these.
    """
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)

    def encode(x):
        f = x.ravel()
        h = np.empty_like(f)
        h[0] = f[0]
        np.subtract(f[1:], f[:-1], out=h[1:])
        if grad:
            w = x.shape[1]
            h[w:] -= h[:-w].copy()
        return cctx.compress(_planes(_zigzag(h)).tobytes())
    return encode


def alt_decoder(grad):
    """Return the decoder matching :py:func:`alt_encoder`."""
    dctx = zstandard.ZstdDecompressor()

    def decode(payload, width, height):
        n = width * height
        g = _unzigzag(_unplanes(np.frombuffer(dctx.decompress(payload), np.uint8), n))
        if grad:
            g = np.cumsum(g.reshape(height, width), axis=0, dtype=np.uint16)
        return np.cumsum(g.ravel(), dtype=np.uint16).reshape(height, width)
    return decode


def grad_zstd_level1_encoder(codec):
    """grad-zstd's layout with plain zstd level 1 instead of its tuned parameters."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)

    def encode(x):
        content = codec._grad_zstd_content(np.ascontiguousarray(x))
        return bytes((codec.GRAD_ZSTD_VERSION,)) + cctx.compress(content)
    return encode


# --- the benchmark ----------------------------------------------------------------------

def codecs():
    """Return the list of (name, encode(x), decode(payload, width, height) or None)."""
    c = _import_codec()
    ours = c.CODEC_GRAD_ZSTD
    return [
        ('grad-zstd (ours)', lambda x: c.encode(x, ours),
         lambda p, w, h: c.decode(p, w, h, ours)),
        ('raw', lambda x: c.encode(x, c.CODEC_RAW),
         lambda p, w, h: c.decode(p, w, h, c.CODEC_RAW)),
        ('2014 12-bit+lz4', old12_encode, old12_decode),
        ('png-1 (Pillow)', png_encoder(1), png_decode),
        ('png-3 (Pillow)', png_encoder(3), png_decode),
        ('rvl (size only)', rvl_size, None),
        ('alt: hdelta-zz-planes-zstd1', alt_encoder(False, 1), alt_decoder(False)),
        ('alt: grad-zz-planes-zstd1', alt_encoder(True, 1), alt_decoder(True)),
        ('alt: grad-zstd, zstd level 1', grad_zstd_level1_encoder(c),
         lambda p, w, h: c.decode(p, w, h, ours)),
    ]


def bench_set(frames, repeat, table):
    """Measure every codec on *frames*; return {name: (ratio, enc_ms, dec_ms, wrong)}."""
    height, width = frames.shape[1:]
    results = {}
    for name, enc, dec in table:
        payloads = [enc(x) for x in frames]
        if dec is None:
            size = sum(payloads)
            results[name] = (frames.nbytes / size, None, None, None)
            continue
        size = sum(len(p) for p in payloads)
        wrong = sum(int(np.count_nonzero(dec(p, width, height) != x))
                    for p, x in zip(payloads, frames))
        t_enc, t_dec = [], []
        rounds = max(repeat, -(-20 // len(frames)))   # at least ~20 samples
        for _ in range(rounds):
            for x, p in zip(frames, payloads):
                t0 = time.perf_counter()
                enc(x)
                t1 = time.perf_counter()
                dec(p, width, height)
                t2 = time.perf_counter()
                t_enc.append(t1 - t0)
                t_dec.append(t2 - t1)
        results[name] = (frames.nbytes / size, 1e3 * np.median(t_enc), 1e3 * np.median(t_dec),
                         wrong / frames.size)
    return results


def _fmt(v, spec):
    return '-' if v is None else format(v, spec)


def main(argv=None):
    """Run the benchmark; return 0 if all goals are met, 1 if not."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default=DEFAULT_DATA,
                        help='directory of .npz frame sets (default: %(default)s)')
    parser.add_argument('--repeat', type=int, default=3,
                        help='timing passes over each set (default: %(default)s)')
    args = parser.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.data, '*.npz')))
    if not paths:
        parser.error('no .npz frame sets in {0}'.format(args.data))
    table = codecs()
    ours, png1 = table[0][0], 'png-1 (Pillow)'
    verdicts = []
    print('zstandard {0} (libzstd {1}), numpy {2}; single thread, medians'.format(
        zstandard.__version__, zstandard.ZSTD_VERSION, np.__version__))
    for path in paths:
        frames = np.load(path)['frames']
        name = os.path.splitext(os.path.basename(path))[0]
        print('\n{0}: {1} frames of {3} x {2}'.format(name, *frames.shape))
        print('  {0:30s} {1:>6s} {2:>8s} {3:>8s} {4:>8s}  {5}'.format(
            'codec', 'ratio', 'enc ms', 'dec ms', 'sum ms', 'lossless'))
        results = bench_set(frames, args.repeat, table)
        for codec_name, (ratio, t_enc, t_dec, wrong) in results.items():
            lossless = ('-' if wrong is None else 'yes' if wrong == 0
                        else 'NO ({0:.1f} % of pixels wrong)'.format(100 * wrong))
            total = None if t_enc is None else t_enc + t_dec
            print('  {0:30s} {1:6.3f} {2:>8s} {3:>8s} {4:>8s}  {5}'.format(
                codec_name, ratio, _fmt(t_enc, '.3f'), _fmt(t_dec, '.3f'),
                _fmt(total, '.3f'), lossless))
        ratio, t_enc, t_dec, wrong = results[ours]
        verdicts.append(('{0}: lossless'.format(name), wrong == 0))
        verdicts.append(('{0}: ratio {1:.3f} >= png-1 {2:.3f}'.format(
            name, ratio, results[png1][0]), ratio >= results[png1][0]))
        if 'kinect2' in name:
            verdicts.append(('{0}: ratio {1:.3f} >= {2}'.format(name, ratio, GOAL_RATIO),
                             ratio >= GOAL_RATIO))
        if frames.shape[1:] == (424, 512):
            verdicts.append(('{0}: enc+dec {1:.3f} ms <= {2} ms per 512x424 frame'.format(
                name, t_enc + t_dec, GOAL_MS), t_enc + t_dec <= GOAL_MS))
    print()
    for text, ok in verdicts:
        print('  [{0}] {1}'.format('ok' if ok else 'FAIL', text))
    met = all(ok for _, ok in verdicts) and any('kinect2' in t for t, _ in verdicts)
    print('Goals {0}: ratio >= {1} on kinect2, enc+dec <= {2} ms, >= png-1 on every set.'
          .format('MET' if met else 'NOT MET', GOAL_RATIO, GOAL_MS))
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
