"""Time registration per frame on one core: sd, qhd and hd outputs from the real captures.

Runs by itself: ``python bench/bench_registration.py [--data FILE] [--repeat N]
[--color-size 1920x1080|960x540]``. It pins itself to one CPU (``os.sched_setaffinity``)
and OpenCV to one thread, loads the nine synchronised captures of ``shared/data/rgbd``
(with their sensor's iai_kinect2 calibration; the recorder saved colour as grey, it is
given as BGR here, as the client decodes it) and times, per frame, from the raw depth
and colour as they arrive:

- ``sd``: ``depth_rect`` + ``color_to_depth`` + the XYZRGB cloud (512 x 424);
- ``qhd``: ``depth_rect`` + ``register_depth`` + ``color_rect`` + the XYZRGB cloud
  (960 x 540);
- ``hd``: the same at 1920 x 1080;

each step too. Medians (and 90th percentiles) of wall time over the captures taken in
turn, *repeat* times (the first pass, which builds the tables, is not counted), and the
median CPU time of a frame. Goals: sd at most 5 ms, qhd at most 10 ms (hd has none).
"""
import argparse
import os
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, '..', 'shared', 'data', 'rgbd',
                                             'kinect2_sync_rgbd.npz'))
GOALS = {'sd': 5.0, 'qhd': 10.0}


def _import():
    try:
        from streamkinect2.calibration import Calibration
        from streamkinect2.registration import Registration
    except ImportError:
        sys.path.insert(0, REPO)
        from streamkinect2.calibration import Calibration
        from streamkinect2.registration import Registration
    return Calibration, Registration


def _one_core(cpu=None):
    """Pin this process to one CPU (default: the last) and OpenCV to one thread."""
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    return cpu


def _pipelines(registration):
    """Return {name: [(step, function(state))]}: each step reads and writes *state*."""
    sd, qhd, hd = registration.sd, registration.qhd, registration.hd

    def rect(s):
        s['rect'] = registration.depth_rect(s['depth'])

    def steps(camera):
        def register(s):
            s['registered'] = registration.register_depth(s['rect'], camera)

        def color(s):
            s['color_rect'] = registration.color_rect(s['color'], camera)

        def cloud(s):
            s['cloud'] = registration.points(s['registered'], camera, s['color_rect'])
        return [('depth_rect', rect), ('register_depth', register), ('color_rect', color),
                ('points XYZRGB', cloud)]

    def to_depth(s):
        s['color_sd'] = registration.color_to_depth(s['color'], s['rect'])

    def sd_cloud(s):
        s['cloud'] = registration.points(s['rect'], sd, s['color_sd'])

    return {'sd': [('depth_rect', rect), ('color_to_depth', to_depth),
                   ('points XYZRGB', sd_cloud)],
            'qhd': steps(qhd), 'hd': steps(hd)}


def run(data, repeat, color_size):
    """Time every pipeline; return {name: (frame times, {step: times})} in ms."""
    Calibration, Registration = _import()
    folder = os.path.dirname(data)
    calibration = Calibration.from_iai_kinect2(folder)
    with np.load(data) as z:
        depths = list(z['depth'])
        colors = [cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) for grey in z['color']]
    if color_size != (colors[0].shape[1], colors[0].shape[0]):
        colors = [cv2.resize(c, color_size, interpolation=cv2.INTER_AREA) for c in colors]
    registration = Registration(calibration, color_size=color_size)
    results = {}
    for name, steps in _pipelines(registration).items():
        frames, cpu, per_step = [], [], {step: [] for step, _ in steps}
        for n in range(repeat + 1):
            for depth, color in zip(depths, colors):
                state = {'depth': depth, 'color': color}
                start, start_cpu = time.perf_counter(), time.process_time()
                for step, function in steps:
                    t0 = time.perf_counter()
                    function(state)
                    if n:
                        per_step[step].append(1e3 * (time.perf_counter() - t0))
                if n:
                    frames.append(1e3 * (time.perf_counter() - start))
                    cpu.append(1e3 * (time.process_time() - start_cpu))
        results[name] = (frames, cpu, per_step)
    return results


def main(argv=None):
    """Run the benchmark and print its table; exit 1 if a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default=DEFAULT_DATA, help='the rgbd captures (.npz)')
    parser.add_argument('--repeat', type=int, default=20,
                        help='passes over the captures (default 20)')
    parser.add_argument('--color-size', default='1920x1080',
                        help='colour frames as received: 1920x1080 or 960x540')
    parser.add_argument('--cpu', type=int, help='the CPU to run on (default: the last)')
    args = parser.parse_args(argv)
    color_size = tuple(int(v) for v in args.color_size.split('x'))
    cpu = _one_core(args.cpu)
    results = run(args.data, args.repeat, color_size)
    print('Registration per frame, one core (CPU {0}), OpenCV {1}, numpy {2}, colour '
          '{3}x{4}; {5} frames each'.format(cpu, cv2.__version__, np.__version__,
                                            color_size[0], color_size[1],
                                            len(next(iter(results.values()))[0])))
    print('{0:<6} {1:<16} {2:>10} {3:>10} {4:>10} {5:>9}'.format(
        'output', 'step', 'median ms', 'p90 ms', 'CPU ms', 'goal'))
    missed = False
    for name, (frames, cpu, per_step) in results.items():
        for step, times in per_step.items():
            print('{0:<6} {1:<16} {2:>10.2f} {3:>10.2f}'.format(
                name, step, np.median(times), np.percentile(times, 90)))
        goal = GOALS.get(name)
        median = float(np.median(frames))
        verdict = '' if goal is None else '{0:g} {1}'.format(
            goal, 'met' if median <= goal else 'MISSED')
        missed = missed or (goal is not None and median > goal)
        print('{0:<6} {1:<16} {2:>10.2f} {3:>10.2f} {4:>10.2f} {5:>9}'.format(
            name, 'per frame', median, np.percentile(frames, 90), np.median(cpu), verdict))
    print('(CPU ms: the CPU time of a frame, median; wall time above it is time '
          'the core spent on something else: run on an idle machine.)')
    return 1 if missed else 0


if __name__ == '__main__':
    sys.exit(main())
