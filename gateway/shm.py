"""System shared memory regions that clients on the gateway's host registered (Triton's extension).

A client creates a POSIX shared memory object (``/dev/shm/<key>``; tritonclient's
``utils.shared_memory.create_shared_memory_region``), registers ``byte_size`` bytes of it at
``offset`` under a region name, and then names the region in an input's or a requested output's
parameters (:mod:`gateway.shm_params`).  The gateway copies such an input's bytes out of the region
into the mesh request before it is published (the mesh carries bytes, wherever its workers run), and
writes such an output's bytes into the region when the response comes back, answering with the
output's metadata and no data.

The gateway opens the object once at registration and reads and writes it with ``pread`` /
``pwrite`` on that descriptor rather than through a mapping: a client that shrinks its object after
registering it then gets a clear error instead of killing the gateway with SIGBUS, and the gateway
never touches bytes past the object's end.  Both run on the event loop, between two awaits, so an
unregister cannot interleave with one copy.  A region named by a request in flight is pinned: an
unregister removes its name at once (the name can be registered again) and closes the descriptor
when the last request using it finishes, as Triton defers it.

Bounds: ``--max-shm-regions`` regions at once (0 turns the extension off); the inputs read from
regions count against ``--max-message-bytes`` before any byte is copied.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import grpc

from gateway.shm_params import ShmRef
from gateway.validate import InferCall
from meshserve.errors import InvalidArgument, MeshError, PayloadTooLarge, Unavailable
from meshserve.pb import mesh_pb2

__all__ = [
    "BOOT_ID",
    "SHM_DIR",
    "CudaShmUnavailable",
    "NotTheSameObject",
    "ObjectId",
    "RegionExists",
    "RegionNotFound",
    "RegionStatus",
    "SharedMemoryRegistry",
    "ShmLease",
    "cuda_register_refusal",
    "cuda_status",
    "shm_object_path",
]

SHM_DIR = Path("/dev/shm")
"""Where Linux keeps POSIX shared memory objects (``shm_open(key)`` is ``/dev/shm/<key>``)."""

_NAME_MAX = 255


class RegionNotFound(MeshError):
    """A request or status call names a region that is not registered (Triton: NOT_FOUND)."""

    code = "NOT_FOUND"
    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404


class RegionExists(InvalidArgument):
    """Register with a name already in use (Triton: ALREADY_EXISTS, "... already in manager")."""

    code = "ALREADY_EXISTS"
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.ALREADY_EXISTS


class NotTheSameObject(InvalidArgument):
    """A registration announced by another gateway names an object this gateway cannot see as the
    same one (another host, another /dev/shm): this gateway does not take it."""


class CudaShmUnavailable(Unavailable):
    """CUDA shared memory needs a GPU (and CUDA IPC) in the gateway's process; this gateway has none.
    gRPC ``UNAVAILABLE``; HTTP 501 (the server cannot do it at all, so not 503's "try later")."""

    http_status = 501


def cuda_register_refusal(name: str) -> CudaShmUnavailable:
    return CudaShmUnavailable(
        f"failed to register CUDA shared memory region '{name}': CUDA shared memory needs a GPU on the "
        "gateway's host and this gateway has no CUDA support; use system shared memory "
        "(tritonclient.utils.shared_memory) or send the tensors in the request"
    )


def cuda_status(registry: SharedMemoryRegistry, name: str) -> list[RegionStatus]:
    """CUDA regions: never any.  A name gets Triton's NOT_FOUND, naming a system region as such."""
    if name:
        if any(region.name == name for region in registry.status("")):
            raise RegionNotFound(
                f"The region named '{name}' is registered as system shared memory, not CUDA shared memory"
            )
        raise RegionNotFound(f"Unable to find cuda shared memory region: '{name}'")
    return []


@dataclass(frozen=True, slots=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


ObjectId = tuple[str, int, int]
"""Which shared memory object a region lies in, across processes: (kernel boot id, st_dev, st_ino).
Two gateways that open the same key see the same id only if they see the same object (same host,
same /dev/shm mount)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


BOOT_ID = _boot_id()


def shm_object_path(key: str, shm_dir: Path = SHM_DIR) -> Path:
    """The file behind a POSIX shared memory key: one name with an optional leading '/'
    (``/input_simple``), never a path — no other '/', no '.' or '..', no NUL."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or "\x00" in name or len(name) > _NAME_MAX:
        raise InvalidArgument(
            f"shared memory key '{key}' is not a POSIX shared memory name: expected '/name' with no "
            f"other '/', not '.' or '..', at most {_NAME_MAX} characters"
        )
    return shm_dir / name


class _Region:
    """One registered region: an open descriptor on its object and where the region lies in it."""

    def __init__(self, status: RegionStatus, fd: int, object_id: ObjectId) -> None:
        self.status = status
        self.object_id = object_id
        self._fd = fd
        self.pins = 0
        self.unregistered = False

    def check(self, ref: ShmRef) -> None:
        """Triton's checks (and wording) for a tensor's place in the region."""
        name, size = self.status.name, self.status.byte_size
        if ref.offset >= size:
            raise InvalidArgument(
                f"Invalid offset for shared memory region: '{name}' (offset {ref.offset}, the region "
                f"holds {size} bytes)"
            )
        if ref.offset + ref.byte_size > size:
            raise InvalidArgument(
                f"Invalid offset + byte size for shared memory region: '{name}' (offset {ref.offset} + "
                f"byte_size {ref.byte_size} > the region's {size} bytes)"
            )

    def read(self, ref: ShmRef) -> bytes:
        start = self.status.offset + ref.offset
        try:
            data = os.pread(self._fd, ref.byte_size, start)
        except OSError as exc:
            raise InvalidArgument(f"cannot read shared memory region '{self.status.name}': {exc}") from None
        if len(data) != ref.byte_size:
            raise InvalidArgument(
                f"shared memory object '{self.status.key}' of region '{self.status.name}' is smaller "
                f"than when it was registered: {ref.byte_size} bytes at {start} cannot be read"
            )
        return data

    def write(self, ref: ShmRef, data: bytes) -> None:
        start = self.status.offset + ref.offset
        try:
            if os.fstat(self._fd).st_size < start + len(data):
                raise InvalidArgument(
                    f"shared memory object '{self.status.key}' of region '{self.status.name}' is smaller "
                    f"than when it was registered: {len(data)} bytes at {start} do not fit"
                )
            written = os.pwrite(self._fd, data, start)
        except OSError as exc:
            raise InvalidArgument(f"cannot write shared memory region '{self.status.name}': {exc}") from None
        if written != len(data):
            raise InvalidArgument(f"short write into shared memory region '{self.status.name}'")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ShmLease:
    """What one request holds while it is in flight: the pinned regions of its shared-memory outputs."""

    def __init__(self, outputs: dict[str, tuple[_Region, ShmRef]]) -> None:
        self._outputs = outputs

    def write_outputs(self, response: mesh_pb2.InferResponse) -> None:
        """Each output the request placed in shared memory goes there; its data leaves the response."""
        for tensor in response.outputs:
            target = self._outputs.get(tensor.name)
            if target is None:
                continue
            region, ref = target
            if len(tensor.data) > ref.byte_size:
                raise InvalidArgument(
                    f"shared memory size specified with the request for output '{tensor.name}' "
                    f"({ref.byte_size} bytes) should be at least {len(tensor.data)} bytes to hold the results"
                )
            region.write(ref, tensor.data)
            tensor.data = b""


_NO_LEASE = ShmLease({})


class SharedMemoryRegistry:
    """The system shared memory regions this gateway knows, by name (per gateway process)."""

    def __init__(self, max_regions: int, shm_dir: Path = SHM_DIR) -> None:
        self._max_regions = max_regions
        self._shm_dir = shm_dir
        self._regions: dict[str, _Region] = {}

    # -- register / unregister / status ------------------------------------------------------------
    def register(
        self, name: str, key: str, offset: int, byte_size: int, expect: ObjectId | None = None
    ) -> ObjectId:
        """Open and check the object; returns its id.  With ``expect`` (a registration another gateway
        announced) the object opened must be that one, else :class:`NotTheSameObject`."""
        if self._max_regions <= 0:
            raise Unavailable(
                "system shared memory is turned off on this gateway (--max-shm-regions 0); "
                "send the tensors in the request"
            )
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise RegionExists(f"shared memory region '{name}' already in manager")
        if len(self._regions) >= self._max_regions:
            raise PayloadTooLarge(
                f"failed to register shared memory region '{name}': {len(self._regions)} regions are "
                f"registered, the limit (--max-shm-regions {self._max_regions}); unregister one first"
            )
        path = shm_object_path(key, self._shm_dir)
        if offset < 0 or byte_size <= 0:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': invalid args: offset must be >= 0 "
                f"and byte_size > 0, got offset {offset}, byte_size {byte_size}"
            )
        fd = _open_object(path, key)
        try:
            info = os.fstat(fd)
            object_id = (BOOT_ID, info.st_dev, info.st_ino)
            if expect is not None and object_id != expect:
                raise NotTheSameObject(f"'{key}' here is not the object another gateway registered")
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(
                    f"Unable to open shared memory region: '{key}': not a shared memory object"
                )
            if offset + byte_size > info.st_size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args: offset {offset} + "
                    f"byte_size {byte_size} runs past the end of '{key}' ({info.st_size} bytes)"
                )
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), fd, object_id)
        return object_id

    def unregister(self, name: str) -> list[tuple[str, ObjectId]]:
        """One region, or every region when ``name`` is empty; an unknown name is not an error (Triton).
        Returns what was removed (name and object), for the other gateways."""
        names = [name] if name else list(self._regions)
        removed = []
        for one in names:
            region = self._regions.get(one)
            if region is not None:
                self._remove(one, region)
                removed.append((one, region.object_id))
        return removed

    def unregister_object(self, name: str, object_id: ObjectId) -> None:
        """Remove ``name`` only if it lies in ``object_id`` (another gateway's unregister)."""
        region = self._regions.get(name)
        if region is not None and region.object_id == object_id:
            self._remove(name, region)

    def _remove(self, name: str, region: _Region) -> None:
        del self._regions[name]
        region.unregistered = True
        if region.pins == 0:
            region.close()

    def status(self, name: str) -> list[RegionStatus]:
        if not name:
            return [region.status for region in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status]

    def close_all(self) -> None:
        self.unregister("")

    # -- inference -----------------------------------------------------------------------------------
    @contextmanager
    def lease(self, call: InferCall, max_bytes: int) -> Iterator[ShmLease]:
        """Read ``call``'s shared-memory inputs into it; pin its shared-memory outputs' regions until
        the request ends (the lease writes them)."""
        shm_inputs = [tensor for tensor in call.inputs if tensor.shm is not None]
        if not shm_inputs and not call.output_shm:
            yield _NO_LEASE
            return
        total = sum(tensor.shm.byte_size for tensor in shm_inputs if tensor.shm is not None)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"request tensors in shared memory total {total} bytes, over the limit of {max_bytes} bytes "
                "(raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)"
            )
        for tensor in shm_inputs:
            assert tensor.shm is not None
            region = self._find(tensor.shm.region)
            region.check(tensor.shm)
            tensor.data = region.read(tensor.shm)
            tensor.shm = None
        outputs: dict[str, tuple[_Region, ShmRef]] = {}
        for output, ref in call.output_shm.items():
            region = self._find(ref.region)
            region.check(ref)
            outputs[output] = (region, ref)
        for region, _ in outputs.values():
            region.pins += 1
        try:
            yield ShmLease(outputs)
        finally:
            for region, _ in outputs.values():
                region.pins -= 1
                if region.unregistered and region.pins == 0:
                    region.close()

    def _find(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"Unable to find shared memory region: '{name}'")
        return region


def _open_object(path: Path, key: str) -> int:
    """Read-write, never through a symbolic link (``O_NOFOLLOW``)."""
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidArgument(
            f"Unable to open shared memory region: '{key}': no such shared memory object on the gateway's "
            "host (create it first; shared memory works only when client and gateway share a host)"
        ) from None
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise InvalidArgument(f"Unable to open shared memory region: '{key}': {reason}") from None
