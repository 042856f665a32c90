"""The shared-memory parameters of one input or requested output (Triton's shared-memory extension).

``shared_memory_region`` (string) names a registered region, ``shared_memory_byte_size`` (int) is the
tensor's size in bytes, ``shared_memory_offset`` (int, default 0) where it starts in the region.  The
region and the byte size go together: one without the other is refused, as Triton does.  Pure: the
codecs call it, :mod:`gateway.shm` resolves what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshserve.errors import InvalidArgument
from meshserve.params import ParamValue

__all__ = ["SHM_KEYS", "ShmRef", "parse_shm_params"]

SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where one tensor's bytes live: ``byte_size`` bytes at ``offset`` in region ``region``."""

    region: str
    byte_size: int
    offset: int = 0


def parse_shm_params(params: Mapping[str, ParamValue], where: str) -> ShmRef | None:
    """``None`` when ``params`` name no shared memory; ``where`` is e.g. "input 'INPUT0'"."""
    present = [key for key in SHM_KEYS if key in params]
    if not present:
        return None
    region = params.get("shared_memory_region")
    size = params.get("shared_memory_byte_size")
    if region is None or size is None:
        raise InvalidArgument(
            f"{where}: 'shared_memory_region' and 'shared_memory_byte_size' go together; "
            f"the request gives only {', '.join(repr(k) for k in present)}"
        )
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{where}: 'shared_memory_region' must be a non-empty string")
    return ShmRef(
        region=region,
        byte_size=_non_negative(size, "shared_memory_byte_size", where),
        offset=_non_negative(params.get("shared_memory_offset", 0), "shared_memory_offset", where),
    )


def _non_negative(value: ParamValue, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
    return value
