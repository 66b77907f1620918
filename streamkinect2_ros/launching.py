"""Helpers for the launch files in ``launch/``: arguments that override the YAML.

Each launch file starts a node with ``parameters=[<params file>, {overrides}]``, where
the overrides are only the launch arguments given a non-empty value: anything left
empty keeps the value of the parameter file. Values are typed by the node's parameter
table (``'true'`` for a bool, ``'[a, b]'`` for a string array, ...).

``launch`` and ``launch_ros`` are imported inside the functions, so this module (and
the tests of the argument parsing) load without them.
"""
import os

__all__ = ['PACKAGE', 'declare_arguments', 'exit_shuts_down', 'node', 'share_path',
           'typed_value']

PACKAGE = 'streamkinect2_ros'


#: What a launch argument of each parameter type must look like (bool before int).
_EXPECTED = ((bool, 'true or false'), (int, 'an integer'), (float, 'a number'))


def typed_value(text, default, name=None):
    """Return launch argument *text* as the type of the parameter's *default*.

    A text that is not of that type raises ValueError naming the argument *name* and
    the type expected: ``launch argument mock_count: expected an integer, got 'abc'``.
    """
    text = text.strip()
    try:
        if isinstance(default, bool):
            if text.lower() not in ('true', 'false'):
                raise ValueError(text)
            return text.lower() == 'true'
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        expected = next(what for kind, what in _EXPECTED if isinstance(default, kind))
        raise ValueError('{0}expected {1}, got {2!r}'.format(
            'launch argument {0}: '.format(name) if name else '', expected, text)) from None
    if isinstance(default, list):
        inner = text[1:-1] if text.startswith('[') and text.endswith(']') else text
        return [item.strip().strip('\'"') for item in inner.split(',') if item.strip()]
    return text


def share_path(config_file):
    """Return a substitution for ``config/<config_file>`` in the package's share dir."""
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    return PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', config_file])


def declare_arguments(specs, names, params_file_argument=None, params_file_name=None):
    """Return DeclareLaunchArgument actions: one per name in *names*, optionally more.

    *specs* is the node's parameter table; each of *names* becomes an argument that
    overrides the parameter file when not empty. With *params_file_argument*, an
    argument of that name (default: ``config/<params_file_name>`` of the package) and a
    ``namespace`` argument come first.
    """
    from launch.actions import DeclareLaunchArgument

    actions = []
    if params_file_argument:
        actions.append(DeclareLaunchArgument(
            params_file_argument, default_value=share_path(params_file_name),
            description='YAML parameter file of the node'))
        actions.append(DeclareLaunchArgument('namespace', default_value='',
                                             description='Namespace of the node(s)'))
    by_name = {spec.name: spec for spec in specs}
    for name in names:
        actions.append(DeclareLaunchArgument(
            name, default_value='',
            description='{0} (empty: as in the parameter file)'.format(
                by_name[name].description)))
    return actions


def exit_shuts_down(executable):
    """Return the ``on_exit`` actions of a node that the launch cannot go on without.

    A node that exits while the launch is not shutting down (it failed at start, or
    died) shuts the whole launch down, its other nodes with it, and makes ``ros2 launch``
    exit non-zero with a line that says which node exited: launch turns an exception
    raised by an action into an error line, a shutdown and exit code 1, and has no other
    way to end with a failure. Nodes stopped by the launch (Ctrl-C) change nothing.
    """
    from launch.actions import OpaqueFunction

    def exited(context):
        if context.is_shutdown:
            return None
        raise RuntimeError('{0} exited with code {1} while the launch was running: '
                           'shutting down'.format(executable, context.locals.event.returncode))
    return [OpaqueFunction(function=exited)]


def node(context, executable, node_name, specs, names, params_file_argument, fixed=None):
    """Return the launch_ros Node for *executable* with the overrides given in *context*.

    *fixed* parameters (a dict) override both the parameter file and the arguments. The
    node exiting by itself shuts the launch down (:func:`exit_shuts_down`).
    """
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    by_name = {spec.name: spec for spec in specs}
    overrides = {}
    for name in names:
        text = LaunchConfiguration(name).perform(context)
        if text != '':
            overrides[name] = typed_value(text, by_name[name].default, name)
    overrides.update(fixed or {})
    params_file = os.path.expanduser(
        LaunchConfiguration(params_file_argument).perform(context))
    return Node(package=PACKAGE, executable=executable, name=node_name,
                namespace=LaunchConfiguration('namespace').perform(context),
                parameters=[params_file, overrides], output='screen', emulate_tty=True,
                on_exit=exit_shuts_down(executable))
