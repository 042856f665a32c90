"""Mesh messages ↔ backend requests and results, for the worker.

Inputs become numpy views over the bytes of the received message (no copy); outputs are encoded
to raw little-endian bytes once, straight into the reply message.
"""

from __future__ import annotations

import numpy as np

from meshserve import tensors
from meshserve.errors import MeshError
from meshserve.params import param_value, set_param
from meshserve.pb import mesh_pb2
from workers.backends.base import Request, Result

__all__ = ["decode_request", "encode_error", "encode_result"]


def decode_request(message: mesh_pb2.InferRequest) -> Request:
    inputs: dict[str, np.ndarray] = {}
    for tensor in message.inputs:
        inputs[tensor.name] = tensors.to_numpy(tensor.name, tensor.datatype, tensor.shape, tensor.data)
    return Request(
        request_id=message.request_id,
        inputs=inputs,
        requested_outputs=list(message.requested_outputs),
        parameters={key: param_value(p) for key, p in message.parameters.items()},
        batch_size=message.batch_size,
        deadline_unix_ns=message.deadline_unix_ns,
    )


def encode_result(request: mesh_pb2.InferRequest, result: Result) -> mesh_pb2.InferResponse:
    if result.error is not None:
        return encode_error(request, result.error)
    response = mesh_pb2.InferResponse(
        request_id=request.request_id, model_name=request.model_name, model_version=request.model_version
    )
    for name, array in result.outputs.items():
        datatype, shape, data = tensors.from_numpy(np.asarray(array))
        response.outputs.append(mesh_pb2.Tensor(name=name, datatype=datatype, shape=shape, data=data))
    for key, value in result.parameters.items():
        set_param(response.parameters[key], value)
    return response


def encode_error(request: mesh_pb2.InferRequest, error: MeshError) -> mesh_pb2.InferResponse:
    return mesh_pb2.InferResponse(
        request_id=request.request_id,
        model_name=request.model_name,
        model_version=request.model_version,
        error=mesh_pb2.Error(code=error.code, message=error.message),
    )
