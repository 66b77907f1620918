#!/usr/bin/env bash
# Set everything up in ./.venv (Python 3.10-3.13, no ROS distribution needed) and run:
#   ./dev.sh demo [args]   ROS 2 demo: mock server node + client node, live Images/s
#   ./dev.sh test [args]   colcon build + colcon test (every test, linters included)
#   ./dev.sh bench         the benchmarks (codec, end to end, ROS pipeline)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}

setup() {
    if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))'; then
        echo "dev.sh: needs Python 3.10-3.13 (set PYTHON=python3.X); $PYTHON is $("$PYTHON" -V 2>&1)" >&2
        exit 2
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "dev.sh: creating .venv" >&2
        "$PYTHON" -m venv .venv
    fi
    echo "dev.sh: installing streamkinect2_ros and its dependencies into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check \
        -e '.[ros,test,bench,dev]'
    # The ROS 2 launch packages and command line (launch, launch_ros, launch_testing,
    # rosidl_runtime_py, ros2 launch/topic/param/...) as wheels, where the shared folder has
    # them (a ROS 2 distribution has its own; the PyPI ROS wheels do not): the launch tests
    # start the launch files with them, and skip, saying why, without them. First pytest
    # < 9: launch_testing's pytest plugin uses a hook argument pytest 9 removed. launch
    # imports lark: ros-rosidl-parser's lark-parser provides it, lark only if it is missing.
    local cli=(../shared/ros2-cli-wheels/*.whl)
    if [ -e "${cli[0]}" ]; then
        echo "dev.sh: installing launch, launch_testing and the ros2 command line from" \
            "../shared/ros2-cli-wheels" >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check 'pytest>=7,<9'
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
            "${cli[@]}"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check osrf-pycommon \
            pyyaml packaging psutil ros-ament-index-python ros-lifecycle-msgs
        .venv/bin/python -c 'import lark' 2>/dev/null ||
            .venv/bin/python -m pip install --quiet --disable-pip-version-check lark
    fi
    # The real pylibfreenect2 (libfreenect2 bundled, CPU pipeline only) from the shared
    # wheel, where there is one and it fits this Python: the freenect2 tests check the
    # backend against it, and skip, saying why, without it. Its import needs
    # pkg_resources, which setuptools 81 dropped.
    local wheels=(../shared/freenect2-wheel/pylibfreenect2-*-cp311-*.whl)
    if [ -e "${wheels[0]}" ]; then
        if .venv/bin/python -c 'import platform, sys; sys.exit(not (
                platform.python_implementation() == "CPython" and sys.platform == "linux"
                and sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"))'; then
            echo "dev.sh: installing the real pylibfreenect2 from ${wheels[0]}" >&2
            .venv/bin/python -m pip install --quiet --disable-pip-version-check \
                "${wheels[0]}" 'setuptools<81' ||
                echo "dev.sh: could not install ${wheels[0]}; the tests that need the" \
                    "real pylibfreenect2 will skip" >&2
        else
            echo "dev.sh: ${wheels[0]} is for CPython 3.11 on x86_64 Linux; the tests" \
                "that need the real pylibfreenect2 will skip" >&2
        fi
    fi
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        setup
        exec .venv/bin/streamkinect2-ros-demo "$@"
        ;;
    test)
        setup
        PATH="$PWD/.venv/bin:$PATH" exec scripts/colcon-test.sh -- "$@"
        ;;
    bench)
        setup
        .venv/bin/python bench/bench_codecs.py "$@"
        .venv/bin/python bench/bench_e2e.py
        .venv/bin/python bench/bench_ros.py
        ;;
    *)
        sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
        [ "$cmd" = help ] || exit 2
        ;;
esac
