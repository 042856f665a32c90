"""Request/response parameters: one conversion between Python values and the protobuf ``oneof``
used by both KServe's ``InferParameter`` and the mesh's ``Param`` (they share the field names
``bool_param``, ``int64_param``, ``uint64_param``, ``double_param``, ``string_param``).
"""

from __future__ import annotations

from typing import Any, Protocol

from meshserve.errors import InvalidArgument

__all__ = ["INT64_MAX", "INT64_MIN", "UINT64_MAX", "ParamValue", "param_value", "set_param"]

ParamValue = bool | int | float | str

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


class _ParamMessage(Protocol):
    bool_param: bool
    int64_param: int
    uint64_param: int
    double_param: float
    string_param: str

    @property
    def DESCRIPTOR(self) -> Any: ...

    def WhichOneof(self, oneof_group: str) -> str | None: ...


def param_value(param: _ParamMessage) -> ParamValue:
    """The value a parameter holds ("" when none is set)."""
    which = param.WhichOneof(param.DESCRIPTOR.oneofs[0].name)
    if which is None:
        return ""
    value: ParamValue = getattr(param, which)
    return value


def set_param(param: _ParamMessage, value: Any) -> None:
    """Store ``value`` in the matching field; integers above int64 go to uint64, beyond that is refused."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            param.int64_param = value
        elif 0 <= value <= UINT64_MAX:
            param.uint64_param = value
        else:
            raise InvalidArgument(f"parameter value {value} is outside the 64-bit integer range")
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)
