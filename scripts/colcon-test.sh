#!/usr/bin/env bash
# Build and test streamkinect2_ros the way a ROS 2 workspace does: colcon build, then
# colcon test (pytest, including the ament_flake8 / ament_pep257 lint tests).
#
#   scripts/colcon-test.sh [WORKSPACE] [-- PYTEST_ARGS...]
#
# WORKSPACE (default: a new temporary directory, removed afterwards) gets
# src/streamkinect2_ros -> this repository (a symlink), and build/ install/ log/.
# Run it with colcon on the PATH: a sourced ROS 2 distribution, or the repository's
# virtual environment (pip install -e '.[ros,test,bench]' colcon-common-extensions
# catkin-pkg ros-ament-flake8 ros-ament-pep257 flake8-builtins flake8-comprehensions
# flake8-docstrings flake8-import-order flake8-quotes), e.g. ./dev.sh test.
# Exits non-zero if the build fails or any test fails or errors.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
workspace=
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) workspace=$1; shift ;;
    esac
done

if ! command -v colcon >/dev/null; then
    echo "colcon-test.sh: colcon not found (source ROS 2, or activate the venv)" >&2
    exit 2
fi

cleanup=
if [ -z "$workspace" ]; then
    workspace=$(mktemp -d "${TMPDIR:-/tmp}/streamkinect2-ws.XXXXXX")
    cleanup=$workspace
fi
trap '[ -n "$cleanup" ] && rm -rf "$cleanup"' EXIT

mkdir -p "$workspace/src"
ln -sfn "$repo" "$workspace/src/streamkinect2_ros"
cd "$workspace"
echo "colcon-test.sh: workspace $workspace" >&2

# Keep every ROS participant of the tests on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# AMENT_PREFIX_PATH is left as it is (colcon warns about a prefix without local_setup
# files, such as a virtual environment): the launch tests (test/launch_helpers.py) put
# the package under test first on it, and this Python's prefix, where launch, ros2cli and
# the ROS wheels register their packages, when it is empty.
export PYTHONDONTWRITEBYTECODE=1

colcon build --base-paths src --packages-select streamkinect2_ros \
    --event-handlers console_cohesion+
test_args=(--base-paths src --packages-select streamkinect2_ros
           --event-handlers console_direct+ --return-code-on-test-failure)
if [ ${#pytest_args[@]} -gt 0 ]; then
    test_args+=(--pytest-args "${pytest_args[@]}")
fi
status=0
colcon test "${test_args[@]}" || status=$?
summary=$(colcon test-result --test-result-base build/streamkinect2_ros --verbose) \
    || status=$?
echo "$summary"
# One plain closing line: "colcon: N passed, N failed, N skipped".
echo "$summary" | awk '/^Summary: /{gsub(",", ""); total=$2; errors=$4; failures=$6;
    skipped=$8; printf "colcon: %d passed, %d failed, %d skipped\n",
    total - errors - failures - skipped, errors + failures, skipped}'
exit $status
