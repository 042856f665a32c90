"""The server, as the load tool sees it: model facts and statistics (blocking, between measurements)
and one inference (asyncio, in the load loops), over gRPC or HTTP with tritonclient.

tritonclient is imported here only, when a connection is made, so ``meshserve`` installs without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from meshserve.loadtool.inputs import Payload
from meshserve.loadtool.streaming import StreamError, StreamTiming, timing_of

__all__ = [
    "Control",
    "Endpoint",
    "Infer",
    "ServerError",
    "StreamInfer",
    "open_control",
    "open_infer",
    "strip_scheme",
]

Protocol = Literal["grpc", "http"]


class ServerError(RuntimeError):
    """The server could not be reached or refused a control call; the message says which and why."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    """host:port, no scheme."""
    protocol: Protocol
    model: str
    version: str = ""
    timeout_s: float = 30.0


def strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


class Control:
    """Blocking calls made between measurements: readiness, metadata, config, statistics."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._grpc = endpoint.protocol == "grpc"
        try:
            if self._grpc:
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
        except ImportError as exc:
            raise ServerError(
                f"the load tool needs tritonclient ({exc}); pip install 'tritonclient[all]'"
            ) from None
        if self._grpc:
            self._client: Any = client_module.InferenceServerClient(endpoint.url)
        else:
            self._client = client_module.InferenceServerClient(
                endpoint.url, connection_timeout=endpoint.timeout_s, network_timeout=endpoint.timeout_s
            )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._grpc:
            kwargs.setdefault("client_timeout", self.endpoint.timeout_s)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise ServerError(
                f"{what} at {self.endpoint.protocol}://{self.endpoint.url} failed: {exc}"
            ) from None

    def wait_ready(self, timeout_s: float) -> None:
        """Until the model is ready (bounded); ServerError with the last reason otherwise."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                if self._call(
                    "model ready", self._client.is_model_ready, self.endpoint.model, self.endpoint.version
                ):
                    return
                last = f"model '{self.endpoint.model}' is not ready"
            except ServerError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                try:  # the server's own words, e.g. an unknown model
                    self.metadata()
                except ServerError as exc:
                    raise ServerError(f"{last}; {exc}") from None
                raise ServerError(f"{last} after {timeout_s:g}s (--wait-ready-secs)")
            time.sleep(0.2)

    def metadata(self) -> dict[str, Any]:
        kwargs = {"as_json": True} if self._grpc else {}
        result: dict[str, Any] = self._call(
            "model metadata",
            self._client.get_model_metadata,
            self.endpoint.model,
            self.endpoint.version,
            **kwargs,
        )
        return result

    def config(self) -> dict[str, Any]:
        kwargs = {"as_json": True} if self._grpc else {}
        result: dict[str, Any] = self._call(
            "model config",
            self._client.get_model_config,
            self.endpoint.model,
            self.endpoint.version,
            **kwargs,
        )
        return result

    def statistics(self) -> dict[str, Any]:
        kwargs = {"as_json": True} if self._grpc else {}
        result: dict[str, Any] = self._call(
            "model statistics",
            self._client.get_inference_statistics,
            self.endpoint.model,
            self.endpoint.version,
            **kwargs,
        )
        return result

    def close(self) -> None:
        self._client.close()


class Infer:
    """One request at a time per call, many calls at once; inputs are encoded once per payload."""

    def __init__(
        self, endpoint: Endpoint, payloads: Sequence[Payload], outputs: Sequence[str], connections: int
    ) -> None:
        self.endpoint = endpoint
        grpc = endpoint.protocol == "grpc"
        if grpc:
            import tritonclient.grpc as types
            import tritonclient.grpc.aio as aio
        else:
            import tritonclient.http as types
            import tritonclient.http.aio as aio
        if grpc:
            self._client: Any = aio.InferenceServerClient(endpoint.url)
        else:
            self._client = aio.InferenceServerClient(
                endpoint.url, conn_limit=max(connections, 1), conn_timeout=endpoint.timeout_s
            )
        self._inputs: list[list[Any]] = []
        for payload in payloads:
            encoded = []
            for name, array in payload.items():
                tensor = types.InferInput(name, list(array.shape), _datatype(array))
                if grpc:
                    tensor.set_data_from_numpy(array)
                else:
                    tensor.set_data_from_numpy(array, binary_data=True)
                encoded.append(tensor)
            self._inputs.append(encoded)
        # HTTP answers JSON outputs unless asked for binary ones (perf_analyzer asks for binary)
        self._outputs: list[Any] | None = None
        if not grpc and outputs:
            self._outputs = [types.InferRequestedOutput(name, binary_data=True) for name in outputs]

    async def __call__(self, index: int) -> None:
        """Request ``index`` (payloads used in turn); raises on any error, after ``timeout_s`` at most."""
        kwargs: dict[str, Any] = {"outputs": self._outputs}
        if self.endpoint.protocol == "grpc":
            kwargs["client_timeout"] = self.endpoint.timeout_s
        async with asyncio.timeout(self.endpoint.timeout_s):
            await self._client.infer(
                self.endpoint.model,
                self._inputs[index % len(self._inputs)],
                model_version=self.endpoint.version,
                **kwargs,
            )

    async def close(self) -> None:
        await self._client.close()


class StreamInfer:
    """A decoupled model over gRPC ``ModelStreamInfer`` (perf_analyzer's ``--streaming``): one stream
    per request, half-closed after it, read until the server ends it; each response with outputs is
    a token."""

    def __init__(self, endpoint: Endpoint, payloads: Sequence[Payload]) -> None:
        import tritonclient.grpc as types
        import tritonclient.grpc.aio as aio

        self.endpoint = endpoint
        self._client: Any = aio.InferenceServerClient(endpoint.url)
        self._inputs: list[list[Any]] = []
        for payload in payloads:
            encoded = []
            for name, array in payload.items():
                tensor = types.InferInput(name, list(array.shape), _datatype(array))
                tensor.set_data_from_numpy(array)
                encoded.append(tensor)
            self._inputs.append(encoded)

    async def __call__(self, index: int) -> StreamTiming:
        inputs = self._inputs[index % len(self._inputs)]
        e = self.endpoint

        async def one_request() -> Any:
            yield {"model_name": e.model, "model_version": e.version, "inputs": inputs}

        start = time.monotonic_ns()
        token_times: list[int] = []
        async with asyncio.timeout(e.timeout_s):
            responses = self._client.stream_infer(one_request(), stream_timeout=e.timeout_s)
            try:
                async for result, error in responses:
                    if error is not None:
                        raise StreamError(str(error))
                    if result is not None and result.get_response().outputs:
                        token_times.append(time.monotonic_ns())
            finally:
                responses.cancel()  # no-op once the server ended the stream
        return timing_of(start, token_times)

    async def close(self) -> None:
        await self._client.close()


def _datatype(array: Any) -> str:
    from tritonclient.utils import np_to_triton_dtype

    datatype: str = np_to_triton_dtype(array.dtype)
    return datatype


def open_control(endpoint: Endpoint) -> Control:
    return Control(endpoint)


def open_infer(
    endpoint: Endpoint, payloads: Sequence[Payload], outputs: Sequence[str], connections: int
) -> Infer:
    return Infer(endpoint, payloads, outputs, connections)
