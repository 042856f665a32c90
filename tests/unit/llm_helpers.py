"""Drive chained stages in one process (no transport): what the stage processes do, minus gRPC."""

from __future__ import annotations

import torch

from meshserve.pb import mesh_pb2
from workers.llm.stage import StageRuntime, decode_hidden, encode_hidden


def chain_step(
    stages: list[StageRuntime], step: mesh_pb2.StageStep, ids: list[int], want_logits: bool = False
):
    x: torch.Tensor = torch.tensor(ids, dtype=torch.long)
    for rt in stages[:-1]:
        out = rt.run(step, x)
        assert isinstance(out, torch.Tensor)
        data, dtype = encode_hidden(out)  # the bytes that would cross the wire
        x = decode_hidden(data, dtype, rt.config.hidden_size)
    if want_logits:
        return stages[-1].logits(step, x)
    return stages[-1].run(step, x)


def greedy(stages: list[StageRuntime], prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """All prompts prefilled together in one packed step, then decoded together (a batch mix)."""
    step = mesh_pb2.StageStep(step_id=1)
    ids: list[int] = []
    for i, p in enumerate(prompts):
        step.seqs.append(mesh_pb2.StageSeq(seq_id=i, start=0, length=len(p), capacity=len(p) + max_tokens))
        ids.extend(p)
    out: list[list[int]] = [[] for _ in prompts]
    tokens = chain_step(stages, step, ids)
    for n in range(max_tokens):
        for i, t in enumerate(tokens):
            out[i].append(t)
        if n == max_tokens - 1:
            break
        step = mesh_pb2.StageStep(step_id=n + 2)
        for i, p in enumerate(prompts):
            step.seqs.append(mesh_pb2.StageSeq(seq_id=i, start=len(p) + n, length=1))
        tokens = chain_step(stages, step, [o[-1] for o in out])
    for rt in stages:
        rt.free(list(range(len(prompts))))
    return out
