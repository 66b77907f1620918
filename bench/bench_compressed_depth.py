"""Cost and size of ``compressedDepth`` messages (PNG and RVL) on real depth frames.

Runs by itself: ``python bench/bench_compressed_depth.py [--data DIR] [--rgbd FILE]
[--repeat N]``. For the real Kinect v2 frames (``kinect2_room_calibration`` in *DIR*,
default ``<repo>/../shared/data/depth``, and the ``depth`` of *FILE*, default
``<repo>/../shared/data/rgbd/kinect2_sync_rgbd.npz``) and the other sensors' frames in
*DIR*, it prints per codec, from :py:mod:`streamkinect2_ros.compressed_depth`:

* ``enc ms``: median time of :py:func:`~streamkinect2_ros.compressed_depth.encode` for
  one frame (the whole ``CompressedImage.data``: header and PNG or RVL);
* ``fill ms``: median of ``fill_compressed_depth_image`` into a ``sensor_msgs``
  message (encode plus the copy into the message; only if sensor_msgs imports), the
  client node's cost per frame before rclpy serialises it;
* ``dec ms``: median of the plugin's own PNG decoding, ``cv2.imdecode(...,
  IMREAD_UNCHANGED)`` (a subscriber's cost; RVL has no Python decoder here);
* ``KiB`` and ``ratio``: mean message data size and raw size over it; ``Mbit/s``: what
  ``ros2 bag record`` writes for that topic at 30 frames a second (mean size), against
  raw 16UC1 (512 x 424 x 2 bytes x 30 = 104 Mbit/s).

Then the RVL encoder's stages (runs and numbers, nibbles, packing into words), and which
codecs reach the ~30 Mbit/s the issue aims at on the Kinect v2 frames. Single thread
(OpenCV is limited to one), ``time.perf_counter``; levels 7-9 are timed once a frame
(level 9 takes about 0.3 s). PNG round trips are checked byte-exact with OpenCV; RVL's
are checked by ``test/test_compressed_depth.py`` (a decoder written from the plugin).
"""
import argparse
import glob
import os
import sys
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data'))
DEFAULT_DATA = os.path.join(SHARED, 'depth')
DEFAULT_RGBD = os.path.join(SHARED, 'rgbd', 'kinect2_sync_rgbd.npz')
FPS = 30
TARGET_MBIT = 30.0

#: (label, codec, png_level); None is the module's default PNG (Huffman-only, Paeth).
VARIANTS = [
    ('png default (huffman, paeth)', 'png', None),
    ('png level 0 (stored)', 'png', 0),
    ('png level 1', 'png', 1),
    ('png level 3 (iron+ default)', 'png', 3),
    ('png level 6', 'png', 6),
    ('png level 9 (humble default)', 'png', 9),
    ('rvl', 'rvl', None),
]


def _import():
    try:
        from streamkinect2_ros import compressed_depth
    except ImportError:
        sys.path.insert(0, REPO)
        from streamkinect2_ros import compressed_depth
    try:
        from sensor_msgs.msg import CompressedImage
    except ImportError:
        CompressedImage = None
    return compressed_depth, CompressedImage


def _median_ms(func, frames, repeat):
    times = []
    for frame in frames:
        for _ in range(repeat):
            start = time.perf_counter()
            func(frame)
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _sets(args):
    sets = []
    for path in sorted(glob.glob(os.path.join(args.data, '*.npz'))):
        with np.load(path) as data:
            sets.append((os.path.splitext(os.path.basename(path))[0], data['frames']))
    if os.path.exists(args.rgbd):
        with np.load(args.rgbd) as data:
            sets.append(('kinect2_sync_rgbd (depth)', data['depth']))
    # The Kinect v2 sets first.
    sets.sort(key=lambda item: ('kinect2' not in item[0], item[0]))
    return sets


def bench_set(cd, compressed_image, frames, repeat):
    """Return ``{label: (enc ms, fill ms, dec ms, mean bytes)}`` for *frames*."""
    results = {}
    for label, codec, level in VARIANTS:
        # At least 9 timings of each variant, so that a set of one frame gives a median.
        times = 1 if level is not None and level >= 7 else max(repeat, -(-9 // len(frames)))
        sizes = [len(cd.encode(f, codec, png_level=level)) for f in frames]
        enc = _median_ms(lambda f: cd.encode(f, codec, png_level=level), frames, times)
        fill = dec = None
        if compressed_image is not None and level in (None, 3):
            fill = _median_ms(lambda f: cd.fill_compressed_depth_image(
                compressed_image, f, 'frame', 0, codec=codec, png_level=level),
                frames, times)
        if codec == 'png':
            datas = [np.frombuffer(cd.encode(f, codec, png_level=level), np.uint8)[
                cd.HEADER_SIZE:] for f in frames]
            for frame, data in zip(frames, datas):
                if not np.array_equal(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), frame):
                    raise SystemExit('{0}: PNG round trip is not exact'.format(label))
            dec = _median_ms(lambda d: cv2.imdecode(d, cv2.IMREAD_UNCHANGED), datas, times)
        results[label] = (enc, fill, dec, float(np.mean(sizes)))
    return results


def rvl_stages(cd, frames, repeat):
    """Return median ms of the RVL encoder's three stages on *frames*."""
    flat = [np.ascontiguousarray(f).reshape(-1) for f in frames]
    numbers = [cd._rvl_numbers(f) for f in flat]
    nibbles = [cd._rvl_nibbles(n) for n in numbers]
    return (_median_ms(cd._rvl_numbers, flat, repeat),
            _median_ms(cd._rvl_nibbles, numbers, repeat),
            _median_ms(cd._rvl_words, nibbles, repeat))


def _fmt(value):
    return '-' if value is None else '{0:.2f}'.format(value)


def main(argv=None):
    """Run the benchmark and print its tables; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default=DEFAULT_DATA,
                        help='directory of .npz depth frame sets (default: %(default)s)')
    parser.add_argument('--rgbd', default=DEFAULT_RGBD,
                        help='RGB-D .npz whose "depth" is used too (default: %(default)s)')
    parser.add_argument('--repeat', type=int, default=3,
                        help='timed encodings of each frame (default: %(default)s)')
    args = parser.parse_args(argv)
    cd, compressed_image = _import()
    cv2.setNumThreads(1)
    sets = _sets(args)
    if not sets:
        parser.error('no depth frames in {0} nor {1}'.format(args.data, args.rgbd))
    print('OpenCV {0}, numpy {1}; single thread; medians per frame; Mbit/s at {2} fps '
          'from the mean size'.format(cv2.__version__, np.__version__, FPS))
    kinect2 = {}
    for name, frames in sets:
        raw = frames[0].nbytes
        print('\n{0}: {1} frames of {3} x {2}; raw 16UC1 {4:.1f} KiB, {5:.1f} Mbit/s'.format(
            name, *frames.shape, raw / 1024, raw * 8 * FPS / 1e6))
        print('  {0:30s} {1:>7s} {2:>7s} {3:>7s} {4:>8s} {5:>6s} {6:>7s}'.format(
            'codec', 'enc ms', 'fill ms', 'dec ms', 'KiB', 'ratio', 'Mbit/s'))
        results = bench_set(cd, compressed_image, frames, args.repeat)
        for label, (enc, fill, dec, size) in results.items():
            mbit = size * 8 * FPS / 1e6
            print('  {0:30s} {1:>7s} {2:>7s} {3:>7s} {4:8.1f} {5:6.3f} {6:7.1f}'.format(
                label, _fmt(enc), _fmt(fill), _fmt(dec), size / 1024, raw / size, mbit))
            if 'kinect2' in name:
                kinect2.setdefault(label, []).append((len(frames), size, enc))
        if 'kinect2' in name:
            numbers, nibbles, pack = rvl_stages(cd, frames, args.repeat)
            print('  rvl stages: runs and numbers {0:.2f} ms, nibbles {1:.2f} ms, packing '
                  'into words {2:.2f} ms'.format(numbers, nibbles, pack))
    if kinect2:
        print('\nAll Kinect v2 frames ({0}), against ~{1:.0f} Mbit/s:'.format(
            sum(n for n, _, _ in next(iter(kinect2.values()))), TARGET_MBIT))
        for label, rows in kinect2.items():
            frames = sum(n for n, _, _ in rows)
            size = sum(n * s for n, s, _ in rows) / frames
            mbit = size * 8 * FPS / 1e6
            cpu = sum(n * e for n, _, e in rows) / frames * FPS / 10
            print('  {0:30s} {1:5.1f} Mbit/s ({2}), encoding {3:5.1f} % of a core at '
                  '{4} fps'.format(label, mbit, 'meets it' if mbit <= TARGET_MBIT else
                                   '{0:+.0f} %'.format(100 * (mbit / TARGET_MBIT - 1)),
                                   cpu, FPS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
