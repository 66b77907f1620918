"""Every dependency in package.xml resolves with rosdep: rosdistro's rules plus ours.

Checked offline against the snapshot of rosdistro in ``../shared/rosdep-snapshot`` (its
README says how: a released ROS package of the distribution, or a key with an ``ubuntu``
and a ``debian`` rule) plus ``rosdep/streamkinect2.yaml``, the keys this repository ships.
"""
import os
import xml.etree.ElementTree as ElementTree

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SNAPSHOT = os.path.join(os.path.dirname(REPO), 'shared', 'rosdep-snapshot')
DISTROS = ('humble', 'jazzy', 'kilted')
DEPEND_TAGS = ('depend', 'build_depend', 'exec_depend', 'test_depend',
               'buildtool_depend', 'build_export_depend')


def dependencies():
    root = ElementTree.parse(os.path.join(REPO, 'package.xml')).getroot()
    return sorted({element.text.strip() for tag in DEPEND_TAGS
                   for element in root.iter(tag)})


def rules(path):
    with open(path) as stream:
        return yaml.safe_load(stream) or {}


def resolvable(rule):
    return isinstance(rule, dict) and 'ubuntu' in rule and 'debian' in rule


@pytest.fixture(scope='module')
def snapshot():
    if not os.path.isdir(SNAPSHOT):
        pytest.skip('no rosdistro snapshot at {0}'.format(SNAPSHOT))
    keys = {}
    for name in ('base.yaml', 'python.yaml'):
        keys.update(rules(os.path.join(SNAPSHOT, name)))
    packages = {}
    for distro in DISTROS:
        with open(os.path.join(SNAPSHOT, 'ros-packages-{0}.txt'.format(distro))) as stream:
            packages[distro] = {line.strip() for line in stream if line.strip()}
    return keys, packages


def unresolved(distro, keys, packages):
    return [name for name in dependencies()
            if name not in packages[distro] and not resolvable(keys.get(name))]


@pytest.mark.parametrize('distro', DISTROS)
def test_every_dependency_resolves_with_the_shipped_rules(snapshot, distro):
    keys, packages = snapshot
    ours = rules(os.path.join(REPO, 'rosdep', 'streamkinect2.yaml'))
    assert all(resolvable(rule) for rule in ours.values())
    assert unresolved(distro, dict(keys, **ours), packages) == []


def test_the_shipped_rules_are_needed_and_not_already_in_rosdistro(snapshot):
    keys, packages = snapshot
    ours = rules(os.path.join(REPO, 'rosdep', 'streamkinect2.yaml'))
    # Without our file these (and only these) do not resolve; none shadows a rosdistro key.
    assert sorted(unresolved('kilted', keys, packages)) == sorted(ours)
    assert not set(ours) & set(keys)
