"""Stage 0's generation loop in one process (one stage, no transport): admission bounds, continuous
batching, stop strings, cancel freeing the KV cache, errors answered in-band."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from meshserve import tensors
from meshserve.params import set_param
from meshserve.pb import mesh_pb2
from tests.llm_repo import build_llm_repo
from workers.llm.engine import Engine
from workers.llm.params import LlmParams
from workers.llm.stage import StageRuntime
from workers.llm.text import load_tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llm_repo(tmp_path_factory.mktemp("llm_engine"))


def request(text: bytes, **params: object) -> mesh_pb2.InferRequest:
    r = mesh_pb2.InferRequest(request_id="r", model_name="llm", model_version=1)
    datatype, shape, data = tensors.from_numpy(np.array([text], dtype=object))
    r.inputs.append(mesh_pb2.Tensor(name="text_input", datatype=datatype, shape=shape, data=data))
    for k, v in params.items():
        set_param(r.parameters[k], v)
    return r


class Harness:
    def __init__(self, ckpt: Path, pending_bytes: int = 0, **params: object) -> None:
        self.params = LlmParams(**params)  # type: ignore[arg-type]
        self.rt = StageRuntime(
            ckpt, 0, 1, max_sequences=self.params.max_sequences, max_kv_tokens=self.params.max_kv_tokens
        )
        self.compute = ThreadPoolExecutor(1)
        self.replies: dict[str, list[mesh_pb2.InferResponse]] = {}
        self.pending = pending_bytes
        self.engine = Engine(
            self.rt, load_tokenizer(ckpt), self.params, self.compute, self.publish, None, "llm", 1,
            lambda: self.pending,
        )  # fmt: skip

    async def publish(self, subject: str, data: bytes) -> None:
        self.replies.setdefault(subject, []).append(mesh_pb2.InferResponse.FromString(data))

    def done(self, subject: str) -> bool:
        got = self.replies.get(subject, [])
        return bool(got) and (not got[-1].more or got[-1].HasField("error"))

    async def wait(self, subjects: list[str]) -> None:
        await until(lambda: all(self.done(s) for s in subjects))

    def text(self, subject: str) -> str:
        out = ""
        for r in self.replies[subject]:
            for t in r.outputs:
                out += tensors.to_numpy(t.name, t.datatype, t.shape, t.data).reshape(-1)[0].decode()
        return out


async def until(condition: Callable[[], bool], limit_s: float = 60) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 (the engine changes state in its own task)
            await asyncio.sleep(0.01)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_batched_sequences_equal_solo_ones(ckpt: Path) -> None:
    async def main() -> None:
        h = Harness(ckpt)
        task = asyncio.create_task(h.engine.run())
        await h.engine.submit(request(b"the gateway", max_tokens=9), "solo")
        await h.wait(["solo"])
        subjects = [f"s{i}" for i in range(5)]
        for i, s in enumerate(subjects):  # join one by one while the others run
            await h.engine.submit(
                request(
                    b"the gateway" if i % 2 else b"a worker", max_tokens=9 if i == 1 else 9 + i, stream=True
                ),
                s,
            )
            await asyncio.sleep(0.01)
        await h.wait(subjects)
        assert h.text("s1") == h.text("solo")
        assert all(len(h.replies[s]) > 1 for s in subjects)  # streamed
        final = h.replies["s4"][-1]
        assert final.parameters["completion_tokens"].int64_param == 13
        # freed: the frees travel with the next step, a free-only one when nothing else runs (which may
        # still be on the compute thread right after the last answer went out)
        await until(lambda: h.rt.pool.sequences == 0, 10)
        task.cancel()

    run(main())


def test_stop_string_and_bounds(ckpt: Path) -> None:
    async def main() -> None:
        h = Harness(ckpt, max_sequences=1, max_waiting=1)
        task = asyncio.create_task(h.engine.run())
        await h.engine.submit(request(b"the gateway", max_tokens=12), "full")
        await h.wait(["full"])
        text = h.text("full")
        stop = text[3:5]
        await h.engine.submit(request(b"the gateway", max_tokens=12, stop=stop), "stopped")
        await h.engine.submit(request(b"x", max_tokens=3), "waits")  # one sequence at a time: waits
        await h.engine.submit(request(b"x", max_tokens=3), "refused")  # max_waiting 1: refused
        await h.wait(["stopped", "waits", "refused"])
        assert h.text("stopped") == text[: text.index(stop)]
        assert h.replies["stopped"][-1].parameters["finish_reason"].string_param == "stop"
        assert h.replies["refused"][-1].error.code == "UNAVAILABLE"
        assert not h.replies["waits"][-1].HasField("error")
        task.cancel()

    run(main())


def test_cancel_frees_kv_cache(ckpt: Path) -> None:
    async def main() -> None:
        h = Harness(ckpt)
        task = asyncio.create_task(h.engine.run())
        await h.engine.submit(request(b"the gateway", max_tokens=300, ignore_eos=True, stream=True), "long")
        await until(lambda: bool(h.replies.get("long")))
        assert h.rt.pool.sequences == 1
        assert h.engine.cancel("long")
        await until(lambda: h.rt.pool.sequences == 0)
        assert h.engine.active == 0 and h.engine.reserved_tokens == 0
        task.cancel()

    run(main())


@pytest.mark.parametrize(
    ("text", "params", "words"),
    [
        (b"", {}, "empty"),
        (b"\xff\xfe", {}, "UTF-8"),
        (b"hi " * 300, {"max_tokens": 300}, "context"),
        (b"hi", {"max_tokens": -1}, "max_tokens"),
        (b"hi", {"top_p": 0.0}, "top_p"),
        (b"hi", {"stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_answered_in_band(
    ckpt: Path, text: bytes, params: dict[str, object], words: str
) -> None:
    async def main() -> None:
        h = Harness(ckpt)
        await h.engine.submit(request(text, **params), "bad")
        (reply,) = h.replies["bad"]
        assert reply.error.code == "INVALID_ARG" and words in reply.error.message, reply.error.message

    run(main())


def test_text_is_grouped_while_the_nats_connection_is_behind(ckpt: Path) -> None:
    """Unsent bytes above ``stream_pending_bytes``: new text waits and goes out with later tokens."""

    async def main() -> None:
        h = Harness(ckpt, pending_bytes=10**9)
        task = asyncio.create_task(h.engine.run())
        await h.engine.submit(request(b"the gateway", max_tokens=12, ignore_eos=True, stream=True), "slow")
        await h.wait(["slow"])
        h.pending = 0
        await h.engine.submit(request(b"the gateway", max_tokens=12, ignore_eos=True, stream=True), "fast")
        await h.wait(["fast"])
        assert len(h.replies["slow"]) == 1 and len(h.replies["fast"]) > 3
        assert h.text("slow") == h.text("fast")
        task.cancel()

    run(main())
