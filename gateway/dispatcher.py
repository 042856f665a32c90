"""The gateway's one way into the mesh: publish a request on its model's subject, await one reply.

nats-py's request() uses one shared reply inbox per connection and resolves each reply by token,
so a reply costs no subscription.  Whoever answers (the worker, or the batcher on error) answers once.
A reply that carries an error is returned as it is: the caller counts it (with the worker's timing,
when there is one) before raising it.
"""

from __future__ import annotations

import logging

import nats.errors
from nats.aio.client import Client

from meshserve import subjects
from meshserve.errors import DeadlineExceeded, Internal, MeshError, Unavailable
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["Dispatcher"]


class Dispatcher:
    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def infer(self, request: mesh_pb2.InferRequest, timeout_s: float) -> mesh_pb2.InferResponse:
        subject = subjects.infer(request.model_name, request.model_version)
        try:
            msg = await self._nc.request(subject, request.SerializeToString(), timeout=timeout_s)
        except nats.errors.TimeoutError:
            raise DeadlineExceeded(
                "Request timeout expired: no response from model "
                f"'{request.model_name}' within {timeout_s:g} s"
            ) from None
        except nats.errors.NoRespondersError:
            raise Unavailable("no batcher is serving requests (none is subscribed on NATS)") from None
        except nats.errors.MaxPayloadError as exc:
            raise Unavailable(f"request larger than the NATS server's max_payload: {exc}") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise Unavailable(f"NATS connection is not available: {exc}") from exc
        except MeshError:
            raise
        except Exception as exc:
            raise Internal(f"cannot send the request into the mesh: {type(exc).__name__}: {exc}") from exc
        response = mesh_pb2.InferResponse()
        try:
            response.ParseFromString(msg.data)
        except Exception as exc:
            raise Internal("undecodable response from the mesh") from exc
        return response
