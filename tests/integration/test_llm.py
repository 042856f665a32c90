"""A sharded language model served by a real mesh: stages as worker processes chained over gRPC.

Greedy text through HTTP generate, generate_stream and gRPC ModelStreamInfer equals one full model's
in this process; requests sharing the pipeline (continuous batching) get the same text as alone; a
seeded sample repeats; bad input is a 400 / INVALID_ARGUMENT; a cancelled stream frees the KV cache
of every stage (their metrics); a stage killed mid-generation ends the stream with an error.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh, start_mesh, wait_for
from tests.llm_repo import build_llm_repo
from tests.unit.llm_helpers import greedy
from workers.llm.stage import StageRuntime
from workers.llm.text import load_tokenizer

PROMPTS = ["the gateway", "a worker", "stages of one model", "NATS"]


def start(tmp: Path, stages: int) -> tuple[Mesh, Path]:
    ckpt = build_llm_repo(tmp / "repo", stages=stages)
    (tmp / "logs").mkdir(exist_ok=True)  # where a client may turn on a trace file (test_stage_spans...)
    mesh = start_mesh(
        tmp / "repo",
        tmp / "mesh.log",
        "--request-timeout-secs",
        "30",
        "--log-dir",
        str(tmp / "logs"),
        timeout_s=180,
    )
    deadline = time.monotonic() + 15  # the gateway hears stage 0's READY on NATS a moment after `up` does
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{mesh.http_url}/v2/models/llm/ready", timeout=5) as resp:
                if resp.status == 200:
                    break
        except urllib.error.URLError:
            pass
        time.sleep(0.1)
    return mesh, ckpt


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    mesh, ckpt = start(tmp_path_factory.mktemp("llm2"), 2)
    try:
        yield mesh, ckpt
    finally:
        code = mesh.stop()
        assert code == 0, mesh.log()[-3000:]


def reference(ckpt: Path, prompt: str, max_tokens: int) -> str:
    """Greedy text of one full model (one stage) in this process."""
    tok = load_tokenizer(ckpt)
    ids = [0, *tok.encode(prompt, add_special_tokens=False).ids]
    out = greedy([StageRuntime(ckpt, 0, 1)], [ids], max_tokens)[0]
    if 1 in out:  # eos
        out = out[: out.index(1)]
    text: str = tok.decode(out, skip_special_tokens=True)
    return text


def post(mesh: Mesh, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        f"http://{mesh.http_url}{path}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def sse(mesh: Mesh, path: str, body: dict[str, object]) -> Iterator[dict[str, object]]:
    host, port = mesh.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        for line in resp:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                if data == b"[DONE]":
                    return
                yield json.loads(data)
    finally:
        conn.close()


def test_generate_matches_single_model(llm: tuple[Mesh, Path]) -> None:
    mesh, ckpt = llm
    for prompt in PROMPTS[:2]:
        status, body = post(mesh, "/v2/models/llm/generate", {"text_input": prompt, "max_tokens": 12})
        assert status == 200, body
        assert body["text_output"] == reference(ckpt, prompt, 12)
        assert body["finish_reason"] in ("length", "stop")


def test_generate_stream_chunks_add_up(llm: tuple[Mesh, Path]) -> None:
    mesh, ckpt = llm
    events = list(sse(mesh, "/v2/models/llm/generate_stream", {"text_input": PROMPTS[0], "max_tokens": 12}))
    assert len(events) > 2
    assert "".join(str(e["text_output"]) for e in events) == reference(ckpt, PROMPTS[0], 12)
    assert events[-1]["completion_tokens"] == 12


def test_concurrent_requests_batch_and_match(llm: tuple[Mesh, Path]) -> None:
    """Several sequences join the running pipeline at different steps; each text equals its solo run."""
    mesh, ckpt = llm
    jobs = [(p, n) for p in PROMPTS for n in (6, 14)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(
            pool.map(
                lambda j: post(mesh, "/v2/models/llm/generate", {"text_input": j[0], "max_tokens": j[1]}),
                jobs,
            )
        )
    for (prompt, n), (status, body) in zip(jobs, got, strict=True):
        assert status == 200, body
        assert body["text_output"] == reference(ckpt, prompt, n), (prompt, n)


def test_grpc_stream_infer(llm: tuple[Mesh, Path]) -> None:
    mesh, ckpt = llm
    results: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error if error is not None else result))
    try:
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([PROMPTS[1].encode()], dtype=object))
        client.async_stream_infer(
            "llm", [text], parameters={"max_tokens": 10, "stream": True}, request_id="g1"
        )
        chunks = []
        while True:
            r = results.get(timeout=60)
            assert not isinstance(r, InferenceServerException), r
            chunks.append(r.as_numpy("text_output")[0].decode())  # type: ignore[attr-defined]
            final = r.get_response().parameters.get("triton_final_response")  # type: ignore[attr-defined]
            if final is not None and final.bool_param:
                break
        assert len(chunks) > 1
        assert "".join(chunks) == reference(ckpt, PROMPTS[1], 10)
        # non-UTF-8 text is refused in-band
        bad = grpcclient.InferInput("text_input", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"\xff\xfe abc"], dtype=object))
        client.async_stream_infer("llm", [bad], parameters={"max_tokens": 4})
        err = results.get(timeout=30)
        assert isinstance(err, InferenceServerException) and "UTF-8" in str(err)
    finally:
        client.stop_stream()
        client.close()


def test_seeded_sampling_repeats(llm: tuple[Mesh, Path]) -> None:
    mesh, _ = llm
    body = {
        "text_input": PROMPTS[2],
        "max_tokens": 12,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 0.95,
        "seed": 11,
    }
    first = post(mesh, "/v2/models/llm/generate", body)
    assert first[0] == 200, first
    assert post(mesh, "/v2/models/llm/generate", body) == first
    other = post(mesh, "/v2/models/llm/generate", {**body, "seed": 12})
    assert other[1]["text_output"] != first[1]["text_output"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text_input": "", "max_tokens": 4}, "empty"),
        ({"text_input": "hi", "max_tokens": 0}, "max_tokens"),
        ({"text_input": "hi", "max_tokens": 100000}, "max_tokens"),
        ({"text_input": "hi " * 400, "max_tokens": 200}, "context"),
        ({"text_input": "hi", "temperature": -1}, "temperature"),
        ({"text_input": "hi", "top_p": 2}, "top_p"),
        ({"text_input": "hi", "top_k": -3}, "top_k"),
        ({"text_input": "hi", "max_tokens": "many"}, "max_tokens"),
    ],
)
def test_bad_input_is_400(llm: tuple[Mesh, Path], body: dict[str, object], words: str) -> None:
    mesh, _ = llm
    status, reply = post(mesh, "/v2/models/llm/generate", body)
    assert status == 400 and words in str(reply["error"]), reply


def test_stage_spans_join_the_request_trace(llm: tuple[Mesh, Path]) -> None:
    """Tracing turned on at run time: every pipeline stage records one span per step of a traced
    request, in the request's trace, under the gateway's NATS span."""
    pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")
    mesh, _ = llm
    settings = {"trace_file": "llm_spans.jsonl", "trace_level": ["TIMESTAMPS"], "trace_rate": "1"}
    status, answer = post(mesh, "/v2/trace/setting", settings)
    assert status == 200, answer
    trace_file = Path(str(answer["trace_file"]))
    try:
        time.sleep(1.0)  # the stage processes start their exporters when their watch sees the setting
        status, _ = post(mesh, "/v2/models/llm/generate", {"text_input": "the gateway", "max_tokens": 3})
        assert status == 200

        def spans() -> list[dict[str, Any]]:
            lines = trace_file.read_text().splitlines() if trace_file.exists() else []
            return [json.loads(line) for line in lines if line.strip()]

        def stage_spans() -> list[dict[str, Any]]:
            return [s for s in spans() if s["name"] == "llm stage"]

        # 3 tokens: one prefill step and two decode steps, each through both stages
        assert wait_for(lambda: len(stage_spans()) >= 6, timeout_s=20), stage_spans()
        (gateway,) = [s for s in spans() if s["name"] == "gateway"]
        (nats,) = [s for s in spans() if s["name"] == "nats request"]
        trace_id = gateway["context"]["trace_id"]
        by_stage: dict[int, list[dict[str, Any]]] = {}
        for span in stage_spans():
            assert span["context"]["trace_id"] == trace_id and span["parent_id"] == nats["context"]["span_id"]
            by_stage.setdefault(span["attributes"]["meshserve.stage"], []).append(span)
        assert sorted(by_stage) == [0, 1]
        assert [len(v) for v in by_stage.values()] == [3, 3]
        assert by_stage[0][0]["attributes"]["meshserve.tokens"] > 1  # the prefill step: the whole prompt
        assert {s["resource"]["attributes"]["service.name"] for s in stage_spans()} == {"meshserve-worker"}
    finally:
        post(mesh, "/v2/trace/setting", {"trace_level": ["OFF"], "trace_rate": None})


def test_openai_completions(llm: tuple[Mesh, Path]) -> None:
    mesh, ckpt = llm
    body = {"model": "llm", "prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0}
    status, reply = post(mesh, "/v1/completions", body)
    assert status == 200, reply
    choice = reply["choices"][0]  # type: ignore[index]
    assert choice["text"] == reference(ckpt, PROMPTS[0], 10) and choice["finish_reason"] in ("length", "stop")
    assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 10  # type: ignore[index]
    chunks = list(sse(mesh, "/v1/completions", {**body, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]  # type: ignore[index]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]  # type: ignore[index]


def test_openai_chat_completions(llm: tuple[Mesh, Path]) -> None:
    from gateway.openai_api import chat_prompt

    mesh, ckpt = llm
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a stage?"}]
    body = {"model": "llm", "messages": messages, "max_tokens": 8, "temperature": 0}
    status, reply = post(mesh, "/v1/chat/completions", body)
    assert status == 200, reply
    content = reply["choices"][0]["message"]["content"]  # type: ignore[index]
    assert content == reference(ckpt, chat_prompt(messages), 8)
    chunks = list(sse(mesh, "/v1/chat/completions", {**body, "stream": True}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}  # type: ignore[index]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content  # type: ignore[index, union-attr]


def test_openai_errors(llm: tuple[Mesh, Path]) -> None:
    mesh, _ = llm
    status, reply = post(mesh, "/v1/completions", {"model": "llm", "prompt": "hi", "temperature": -2})
    assert status == 400 and "temperature" in reply["error"]["message"], reply  # type: ignore[index]
    status, reply = post(mesh, "/v1/completions", {"model": "nope", "prompt": "hi"})
    assert status == 404, reply
    status, reply = post(mesh, "/v1/chat/completions", {"model": "llm", "messages": []})
    assert status == 400, reply
    status, reply = post(
        mesh, "/v1/completions", {"model": "llm", "prompt": "hi", "stream": True, "top_p": 7}
    )
    assert status == 400 and "top_p" in reply["error"]["message"], reply  # type: ignore[index]


def stage_metrics(mesh: Mesh) -> dict[str, float]:
    """``meshserve_llm_kv_sequences`` per stage, from each stage's own metrics endpoint (in the log)."""
    urls = sorted(
        {
            line.split("'metrics': '")[1].split("'")[0]
            for line in mesh.log().splitlines()
            if "'stage':" in line and "'metrics': 'http" in line
        }
    )
    values: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("meshserve_llm_kv_tokens_reserved{"):
                    values[url] = float(line.rsplit(" ", 1)[1])
    return values


def test_cancelled_stream_frees_kv_cache_in_every_stage(llm: tuple[Mesh, Path]) -> None:
    mesh, _ = llm
    stream = sse(
        mesh,
        "/v2/models/llm/generate_stream",
        {"text_input": PROMPTS[3], "max_tokens": 400, "ignore_eos": True},
    )
    next(stream)
    busy = stage_metrics(mesh)
    assert len(busy) == 2 and all(v > 0 for v in busy.values()), busy
    stream.close()  # the client goes away mid-generation
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(v == 0 for v in stage_metrics(mesh).values()):
            break
        time.sleep(0.2)
    assert all(v == 0 for v in stage_metrics(mesh).values()), stage_metrics(mesh)


def stage_pid(mesh: Mesh, stage: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if (
            ppid == mesh.process.pid
            and b"--stage" in args
            and args[args.index(b"--stage") + 1] == str(stage).encode()
        ):
            return int(entry.name)
    raise AssertionError(f"no process for stage {stage}")


def test_four_stages_match_and_a_dying_stage_ends_the_stream(tmp_path: Path) -> None:
    mesh, ckpt = start(tmp_path, 4)
    try:
        status, body = post(mesh, "/v2/models/llm/generate", {"text_input": PROMPTS[2], "max_tokens": 10})
        assert status == 200 and body["text_output"] == reference(ckpt, PROMPTS[2], 10), body
        stream = sse(
            mesh,
            "/v2/models/llm/generate_stream",
            {"text_input": PROMPTS[0], "max_tokens": 400, "ignore_eos": True},
        )
        next(stream)
        os.kill(stage_pid(mesh, 2), signal.SIGKILL)  # a middle stage: neither end of stage 0's links
        start_t = time.monotonic()
        rest = list(stream)
        assert "error" in rest[-1] and "stage" in str(rest[-1]["error"]), rest[-3:]
        assert time.monotonic() - start_t < 15
        # new requests are refused while the pipeline is incomplete, not left hanging
        status, body = post(mesh, "/v2/models/llm/generate", {"text_input": "x", "max_tokens": 2})
        assert status in (400, 503) and body["error"], body
    finally:
        mesh.stop()


def test_a_stage_that_cannot_load_makes_the_model_unavailable_with_its_reason(tmp_path: Path) -> None:
    """Stage 1's tensors do not fit the config (stage 0's do): `up` reports the model UNAVAILABLE with
    stage 1's reason at once, instead of stage 0 waiting out its ring timeout."""
    import torch
    from safetensors.torch import load_file, save_file

    ckpt = build_llm_repo(tmp_path / "repo", stages=2)
    shard = ckpt / "model-00002-of-00002.safetensors"
    tensors_ = load_file(str(shard))
    tensors_["lm_head.weight"] = torch.zeros(3, 3)
    save_file(tensors_, str(shard))
    started = time.monotonic()
    mesh = start_mesh(tmp_path / "repo", tmp_path / "mesh.log", timeout_s=180)
    try:
        assert time.monotonic() - started < 80  # well under the 90 s ring timeout
        state = mesh.models["llm:1"]
        assert state.startswith("UNAVAILABLE") and "stage 1 failed to load" in state, state
    finally:
        mesh.stop()
