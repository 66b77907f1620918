"""Checks of the launch files and parameter files against the nodes and setup.py.

``launch``/``launch_ros`` may be missing (the PyPI ROS wheels do not ship them): the
launch files are then compiled, parsed, and run against small stand-ins of the launch
API that record what the files ask for.
"""
import ast
import contextlib
import glob
import os
import re
import sys
import types

from launch_helpers import load_launch_file
import pytest

from streamkinect2_ros import launching

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_FILES = sorted(glob.glob(os.path.join(REPO, 'launch', '*.launch.py')))

client_node = pytest.importorskip('streamkinect2_ros.client_node')
server_node = pytest.importorskip('streamkinect2_ros.server_node')
NODES = {'server_node': server_node, 'client_node': client_node}
yaml = pytest.importorskip('yaml')


def console_scripts():
    """Return ``{script: 'module:function'}`` from setup.py's console_scripts."""
    tree = ast.parse(open(os.path.join(REPO, 'setup.py')).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    entries = ast.literal_eval(value)
                    return dict(re.split(r'\s*=\s*', e, maxsplit=1) for e in entries)
    raise AssertionError('no console_scripts in setup.py')


def test_launch_files_exist_and_compile():
    names = {os.path.basename(p) for p in LAUNCH_FILES}
    assert {'server.launch.py', 'client.launch.py', 'demo.launch.py'} <= names
    for path in LAUNCH_FILES:
        tree = ast.parse(open(path).read(), path)
        compile(tree, path, 'exec')
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert 'generate_launch_description' in functions, path


def test_console_scripts_point_at_the_nodes():
    scripts = console_scripts()
    for executable, module in NODES.items():
        assert scripts[executable] == '{0}:main'.format(module.__name__)
        assert callable(module.main)


@pytest.mark.parametrize('yaml_name,module', [('server.yaml', server_node),
                                              ('client.yaml', client_node)])
def test_parameter_files_match_the_nodes(yaml_name, module):
    path = os.path.join(REPO, 'config', yaml_name)
    data = yaml.safe_load(open(path))
    assert list(data) == ['/**/' + module.NODE_NAME]
    params = data['/**/' + module.NODE_NAME]['ros__parameters']
    specs = {spec.name: spec for spec in module.PARAMETERS}
    assert set(params) <= set(specs), set(params) - set(specs)
    # Only the string arrays that are empty by default may be left out of the file.
    missing = set(specs) - set(params)
    assert all(specs[name].default == [] for name in missing), missing
    for name, value in params.items():
        default = specs[name].default
        assert type(value) is type(default), (name, value, default)
    # Every parameter is documented by a comment in the file.
    lines = open(path).read().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r'\s+#?\s*(\w+):', line)
        if match and match.group(1) in specs:
            assert lines[number - 1].strip().startswith('#'), line


def test_typed_value():
    assert launching.typed_value('true', False) is True
    assert launching.typed_value('False', True) is False
    assert launching.typed_value('7', 1) == 7
    assert launching.typed_value('15', 30.0) == 15.0
    assert launching.typed_value('[a, "b"]', []) == ['a', 'b']
    assert launching.typed_value('on', '') == 'on'
    with pytest.raises(ValueError):
        launching.typed_value('yes', True)


@pytest.mark.parametrize('text,default,expected', [
    ('abc', 1, 'an integer'), ('1.5', 1, 'an integer'), ('fast', 30.0, 'a number'),
    ('', 30.0, 'a number'), ('yes', True, 'true or false'), ('1', False, 'true or false')])
def test_a_bad_argument_names_itself_and_the_type_expected(text, default, expected):
    with pytest.raises(ValueError) as raised:
        launching.typed_value(text, default, 'some_arg')
    assert str(raised.value) == 'launch argument some_arg: expected {0}, got {1!r}'.format(
        expected, text)


# --- stand-ins for launch / launch_ros -------------------------------------------------

class _Recorded(object):
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(object):
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]


def _stub_modules():
    classes = {
        'launch': {'LaunchDescription': type('LaunchDescription', (_Recorded,), {})},
        'launch.actions': {name: type(name, (_Recorded,), {}) for name in (
            'DeclareLaunchArgument', 'OpaqueFunction')},
        'launch.substitutions': {'LaunchConfiguration': _LaunchConfiguration,
                                 'PathJoinSubstitution': type('PathJoinSubstitution',
                                                              (_Recorded,), {})},
        'launch_ros': {},
        'launch_ros.actions': {'Node': type('Node', (_Recorded,), {})},
        'launch_ros.substitutions': {'FindPackageShare': type('FindPackageShare',
                                                              (_Recorded,), {})},
    }
    modules = {}
    for name, attributes in classes.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        modules[name] = module
    return modules


@contextlib.contextmanager
def launch_api():
    """Yield True with the real launch API, else False with stand-ins installed."""
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
        yield True
        return
    except ImportError:
        pass
    saved = {name: sys.modules.get(name) for name in _stub_modules()}
    sys.modules.update(_stub_modules())
    try:
        yield False
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=os.path.basename)
def test_launch_file_nodes_and_parameters(path):
    with launch_api() as real:
        module = load_launch_file(path)
        description = module.generate_launch_description()
        if real:
            import launch
            assert isinstance(description, launch.LaunchDescription)
            return
        entities = description.args[0]
        arguments = {e.args[0]: e.kwargs for e in entities
                     if type(e).__name__ == 'DeclareLaunchArgument'}
        setups = [e.kwargs['function'] for e in entities
                  if type(e).__name__ == 'OpaqueFunction']
        assert len(setups) == 1
        for name, kwargs in arguments.items():
            assert kwargs.get('description'), name
        # Run the setup with every argument at its default, then with overrides given.
        context = {name: kwargs['default_value'] if isinstance(kwargs['default_value'], str)
                   else '/share/config.yaml' for name, kwargs in arguments.items()}
        samples = {'mock_count': '2', 'mock_fps': '15.0', 'announce': 'false',
                   'mock_ids': '[a, b]', 'stamp_source': 'receive', 'qos_depth': '3'}
        for values in ({}, {n: v for n, v in samples.items() if n in arguments}):
            nodes = setups[0]({**context, **values})
            scripts = console_scripts()
            for node in nodes:
                kwargs = node.kwargs
                assert kwargs['package'] == 'streamkinect2_ros'
                assert kwargs['executable'] in scripts
                node_module = NODES[kwargs['executable']]
                assert kwargs['name'] == node_module.NODE_NAME
                params_file, overrides = kwargs['parameters']
                assert params_file == '/share/config.yaml'
                declared = {spec.name: spec for spec in node_module.PARAMETERS}
                assert set(overrides) <= set(declared), set(overrides) - set(declared)
                for name, value in overrides.items():
                    assert type(value) is type(declared[name].default), (name, value)
                for name, text in values.items():
                    if name in declared and name in arguments:
                        assert name in overrides


def test_empty_string_arrays_are_declared_with_a_value():
    """``ros2 param dump``/``get`` see every parameter: empty arrays are set to []."""
    rclpy = pytest.importorskip('rclpy')
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter import Parameter
    from streamkinect2_ros.params import declare_all, ParamSpec

    specs = (ParamSpec('empty', [], 'unset by default', True),
             ParamSpec('given', [], 'given by an override', True),
             ParamSpec('writable', [], 'changeable', False),
             ParamSpec('count', 1, 'a number', True, (1, 3)))
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('streamkinect2_params_test', context=context,
                                 parameter_overrides=[Parameter('given', value=['a'])])
        try:
            assert declare_all(node, specs) == {'empty': [], 'given': ['a'],
                                                'writable': [], 'count': 1}
            for name, value in (('empty', []), ('given', ['a']), ('writable', [])):
                parameter = node.get_parameter(name)
                assert parameter.type_ == Parameter.Type.STRING_ARRAY, name
                assert list(parameter.value) == value
                # What the get_parameters service answers (ros2 param get/dump).
                message = parameter.get_parameter_value()
                assert message.type == ParameterType.PARAMETER_STRING_ARRAY
            described = {d.name: d for d in node.describe_parameters(
                ['empty', 'given', 'writable'])}
            assert described['empty'].read_only and described['given'].read_only
            assert not described['writable'].read_only
            assert described['empty'].type == ParameterType.PARAMETER_STRING_ARRAY
            assert described['empty'].description == 'unset by default'
            # Read-only stays read-only; a writable one takes strings, not other types.
            assert not node.set_parameters([Parameter('empty', value=['x'])])[0].successful
            assert node.set_parameters([Parameter('writable', value=['x'])])[0].successful
            assert not node.set_parameters([Parameter('writable', value=[1])])[0].successful
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()
