"""Parameter declarations shared by the nodes: one table per node, declared in one go.

Each node module lists its parameters as :py:class:`ParamSpec` entries; the launch
tests read the same tables to check launch files and YAML files against them.
"""
import collections

__all__ = ['ParamSpec', 'declare_all', 'names']

ParamSpec = collections.namedtuple('ParamSpec', ['name', 'default', 'description',
                                                 'read_only', 'range'], defaults=(None,))
ParamSpec.__doc__ = """One node parameter.

*default* is the default value; an empty list stands for a string array that is empty by
default (rclpy cannot infer a type from an empty list: :func:`declare_all` declares it as
a string array). *read_only* parameters cannot be
changed once the node runs. *range*, for an integer or a double, is ``(lowest,
highest)``, both allowed: rclpy refuses any other value, the node then does not start.
"""


def names(specs):
    """Return the set of parameter names in *specs*."""
    return {spec.name for spec in specs}


def declare_all(node, specs):
    """Declare every parameter of *specs* on *node*; return ``{name: value}``.

    String arrays that default to empty are set to an empty string array when no value
    is given, so that every parameter has a value (``ros2 param dump`` lists them all,
    ``ros2 param get`` answers ``[]``).
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {}
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.description,
                                         read_only=spec.read_only)
        if spec.range is not None:
            low, high = spec.range
            if isinstance(spec.default, float):
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(low), to_value=float(high), step=0.0)]
            else:
                descriptor.integer_range = [IntegerRange(from_value=int(low),
                                                         to_value=int(high), step=1)]
        if isinstance(spec.default, list) and not spec.default:
            _declare_empty_string_array(node, spec.name, descriptor)
        else:
            node.declare_parameter(spec.name, spec.default, descriptor)
        value = node.get_parameter(spec.name).value
        values[spec.name] = list(value) if isinstance(value, (list, tuple)) else value
    return values


def _declare_empty_string_array(node, name, descriptor):
    """Declare string array *name* with *descriptor*, set to ``[]`` unless a value is given.

    rclpy types ``declare_parameter(name, [])`` as a byte array, and leaves
    ``declare_parameter(name, Parameter.Type.STRING_ARRAY)`` without a value: so the
    parameter is declared by type (writable), set to ``[]`` if it has no value, then
    given its descriptor (read-only or not).
    """
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    node.declare_parameter(name, Parameter.Type.STRING_ARRAY,
                           ParameterDescriptor(description=descriptor.description))
    try:
        node.get_parameter(name)
    except ParameterUninitializedException:
        result, = node.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, [])])
        if not result.successful:
            raise ValueError('parameter {0}: {1}'.format(name, result.reason))
    descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
    node.set_descriptor(name, descriptor)
