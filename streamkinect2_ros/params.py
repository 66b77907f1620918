"""Parameter declarations shared by the nodes: one table per node, declared in one go.

Each node module lists its parameters as :py:class:`ParamSpec` entries; the launch
tests read the same tables to check launch files and YAML files against them. What a
parameter may hold is said once, in its entry: its range or its allowed values, which
:func:`declare_all` writes into the parameter's descriptor (``ros2 param describe``
shows them) and enforces, at start and on every change.
"""
import collections

__all__ = ['ParamSpec', 'constraints', 'declare_all', 'names', 'refusal']

ParamSpec = collections.namedtuple('ParamSpec', ['name', 'default', 'description',
                                                 'read_only', 'range', 'choices'],
                                   defaults=(None, None))
ParamSpec.__doc__ = """One node parameter.

*default* is the default value; an empty list stands for a string array that is empty by
default (rclpy cannot infer a type from an empty list: :func:`declare_all` declares it as
a string array). *read_only* parameters cannot be
changed once the node runs. *range*, for an integer or a double, is ``(lowest,
highest)``, both allowed: rclpy refuses any other value, the node then does not start.
*choices*, for a string or a string array, are the values allowed (for an array: for
each of its items); the descriptor's ``additional_constraints`` lists them.
"""


def names(specs):
    """Return the set of parameter names in *specs*."""
    return {spec.name for spec in specs}


def constraints(spec):
    """Return the ``additional_constraints`` text of *spec*: its allowed values, or ''."""
    if not spec.choices:
        return ''
    return '{0}one of: {1}'.format('each ' if isinstance(spec.default, list) else '',
                                   ', '.join(spec.choices))


def refusal(spec, value):
    """Return why *value* is not allowed for *spec* (a sentence), or None if it is."""
    if not spec.choices:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    wrong = [item for item in items if item not in spec.choices]
    if not wrong:
        return None
    return 'parameter {0}: {1} {2} not one of: {3}'.format(
        spec.name, ', '.join(repr(item) for item in wrong),
        'is' if len(wrong) == 1 else 'are', ', '.join(spec.choices))


def declare_all(node, specs, on_set=None):
    """Declare every parameter of *specs* on *node*; return ``{name: value}``.

    String arrays that default to empty are set to an empty string array when no value
    is given, so that every parameter has a value (``ros2 param dump`` lists them all,
    ``ros2 param get`` answers ``[]``). A value given outside a parameter's *choices*
    raises ValueError naming each such parameter and its allowed values.

    Changes while the node runs go through one callback registered here: it refuses a
    value outside *choices* (with that sentence as the reason), then, if every value is
    allowed, returns ``on_set(parameters)`` (a ``SetParametersResult``; *parameters* those
    of *specs* among the changed) where *on_set* is given. rclpy runs callbacks added
    later before this one: *on_set* sees only changes they accepted.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {}
    problems = []
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.description,
                                         read_only=spec.read_only,
                                         additional_constraints=constraints(spec))
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
        problem = refusal(spec, values[spec.name])
        if problem is not None:
            problems.append(problem)
    if problems:
        raise ValueError('; '.join(problems))
    node.add_on_set_parameters_callback(_checker(specs, on_set))
    return values


def _checker(specs, on_set):
    """Return the on-set-parameters callback of :func:`declare_all`."""
    from rcl_interfaces.msg import SetParametersResult

    by_name = {spec.name: spec for spec in specs}

    def check(parameters):
        # Others (qos_overrides.*, use_sim_time) are not ours to judge.
        ours = [parameter for parameter in parameters if parameter.name in by_name]
        for parameter in ours:
            problem = refusal(by_name[parameter.name], parameter.value)
            if problem is not None:
                return SetParametersResult(successful=False, reason=problem)
        if on_set is not None and ours:
            return on_set(ours)
        return SetParametersResult(successful=True)
    return check


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
