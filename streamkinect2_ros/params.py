"""Parameter declarations shared by the nodes: one table per node, declared in one go.

Each node module lists its parameters as :py:class:`ParamSpec` entries; the launch
tests read the same tables to check launch files and YAML files against them.
"""
import collections

__all__ = ['ParamSpec', 'declare_all', 'names']

ParamSpec = collections.namedtuple('ParamSpec', ['name', 'default', 'description',
                                                 'read_only', 'range'], defaults=(None,))
ParamSpec.__doc__ = """One node parameter.

*default* is the default value; an empty list stands for a string array that is unset by
default (rclpy cannot infer a type from an empty list). *read_only* parameters cannot be
changed once the node runs. *range*, for an integer or a double, is ``(lowest,
highest)``, both allowed: rclpy refuses any other value, the node then does not start.
"""


def names(specs):
    """Return the set of parameter names in *specs*."""
    return {spec.name for spec in specs}


def declare_all(node, specs):
    """Declare every parameter of *specs* on *node*; return ``{name: value}``.

    String arrays that default to empty are declared with their type only and read as
    ``[]`` while unset.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

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
        default = spec.default
        if isinstance(default, list) and not default:
            default = Parameter.Type.STRING_ARRAY
        node.declare_parameter(spec.name, default, descriptor)
        try:
            value = node.get_parameter(spec.name).value
        except ParameterUninitializedException:
            value = []
        values[spec.name] = list(value) if isinstance(value, (list, tuple)) else value
    return values
