"""Parse a client's JSON body so that every way it can be wrong is a clear 400, never a 500.

Beyond what :func:`json.loads` refuses: nesting past the interpreter's recursion guard (RecursionError)
and lone UTF-16 surrogates (``"\\ud800"`` is valid JSON but not Unicode text: it cannot become UTF-8
for a BYTES tensor, a protobuf string or a log line).
"""

from __future__ import annotations

import json
import re
from typing import Any

from meshserve.errors import InvalidArgument

__all__ = ["loads_checked"]

_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")
"""Surrogates reach a parsed string only through a ``\\uD8xx``-``\\uDFxx`` escape (raw UTF-8 cannot
carry them), so the walk below runs only for bodies that hold such an escape."""


def loads_checked(raw: bytes, what: str, **kwargs: Any) -> Any:
    """``json.loads(raw)``; an error names ``what`` ("the request JSON") and says what is wrong."""
    try:
        value = json.loads(raw, **kwargs)
    except RecursionError:
        raise InvalidArgument(f"failed to parse {what}: it is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(value, what)
    return value


def _refuse_lone_surrogates(value: Any, what: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(
                    f"{what} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff) in the string "
                    f"{text.encode('utf-8', 'backslashreplace').decode()[:80]!r}: strings must be Unicode text"
                ) from None
