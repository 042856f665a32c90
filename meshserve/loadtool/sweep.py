"""One ``meshserve bench`` run: ask the server about the model, build the requests, then for each
level warm up, read the statistics, measure, read them again; report as the run goes and at the end."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from meshserve.loadtool.cli import BenchSettings
from meshserve.loadtool.inputs import InputError, Payload, generate_payloads, input_specs, load_input_file
from meshserve.loadtool.load import Phase
from meshserve.loadtool.pool import Runner, SenderSpec, make_runner
from meshserve.loadtool.progress import Progress
from meshserve.loadtool.report import StepResult, format_table, step_result, write_csv, write_json
from meshserve.loadtool.server_stats import ServerBreakdown, breakdown, snapshot
from meshserve.loadtool.transport import Control, Endpoint, ServerError

__all__ = ["run_bench"]

RANDOM_PAYLOADS = 16
"""Distinct random requests, used in turn."""
WORDS = ("the", "mesh", "serves", "a", "model", "over", "grpc", "and", "nats", "with", "batches", "fast")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _payloads(settings: BenchSettings, metadata: dict[str, Any], config: dict[str, Any]) -> list[Payload]:
    specs = input_specs(metadata, config)
    if settings.input_data in ("random", "zero"):
        return generate_payloads(
            specs,
            "random" if settings.input_data == "random" else "zero",
            batch_size=settings.batch_size,
            shapes=settings.shapes,
            count=RANDOM_PAYLOADS,
            seed=settings.seed,
            string_length=settings.string_length,
        )
    return load_input_file(
        Path(settings.input_data), specs, batch_size=settings.batch_size, shapes=settings.shapes
    )


def _json_value(array: Any) -> Any:
    values = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.ravel().tolist()]
    return values[0] if array.size == 1 else values


def _stream_bodies(settings: BenchSettings, control: Control | None) -> list[dict[str, Any]]:
    """generate: the JSON file's entries as they are, else flat JSON of generated inputs; openai: a
    completion request per entry (a synthetic prompt unless the file gives ``prompt``)."""
    entries: list[dict[str, Any]] = []
    if settings.input_data not in ("random", "zero"):
        import json

        try:
            document = json.loads(Path(settings.input_data).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--input-data {settings.input_data}: {exc}") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
            raise InputError(f'--input-data {settings.input_data}: expected {{"data": [{{...}}, ...]}}')
        entries = data
    if settings.endpoint == "openai":
        rng = random.Random(settings.seed)
        base = {"model": settings.model, "max_tokens": settings.output_tokens, "stream": True}
        if not entries:
            entries = [
                {"prompt": " ".join(rng.choice(WORDS) for _ in range(settings.prompt_tokens))}
                for _ in range(RANDOM_PAYLOADS)
            ]
        return [base | e | {"stream": True} for e in entries]
    if entries:
        return entries
    if control is None:
        raise InputError("--endpoint generate needs the model's metadata (or --input-data FILE.json)")
    payloads = _payloads(settings, control.metadata(), control.config())
    return [{name: _json_value(array) for name, array in p.items()} for p in payloads]


def _sender_spec(settings: BenchSettings, endpoint: Endpoint, control: Control | None) -> SenderSpec:
    connections = int(max(settings.levels)) if settings.mode == "concurrency" else settings.max_inflight
    connections = max(1, -(-connections // settings.processes))
    if settings.llm and settings.protocol == "grpc":  # generate over gRPC ModelStreamInfer: tensors
        assert control is not None
        return SenderSpec(
            kind="stream",
            endpoint=endpoint,
            connections=connections,
            payloads=_payloads(settings, control.metadata(), control.config()),
        )
    if settings.llm:
        return SenderSpec(
            kind="stream",
            endpoint=endpoint,
            connections=connections,
            stream_endpoint="openai" if settings.endpoint == "openai" else "generate",
            bodies=_stream_bodies(settings, control),
        )
    assert control is not None
    metadata, config = control.metadata(), control.config()
    outputs = [str(o["name"]) for o in metadata.get("outputs", [])]
    return SenderSpec(
        kind="infer",
        endpoint=endpoint,
        connections=connections,
        payloads=_payloads(settings, metadata, config),
        outputs=outputs,
    )


def _phase(settings: BenchSettings, level: float, seed: int, warmup: bool) -> Phase:
    if warmup:
        count = settings.warmup_request_count or None
        duration = None if count else settings.warmup_secs
    else:
        count = settings.request_count
        duration = None if count else settings.measurement_interval_ms / 1000.0
    return Phase(
        mode=settings.mode,
        level=level,
        duration_s=duration,
        count=count,
        distribution=settings.distribution,
        seed=seed,
        max_duration_s=settings.max_step_secs,
        max_inflight=max(1, settings.max_inflight // settings.processes),
    )


def _stats(control: Control | None, settings: BenchSettings) -> Any:
    if control is None:
        return None
    try:
        return snapshot(control.statistics(), settings.model, settings.version)
    except (ServerError, LookupError) as exc:
        _say(f"no server statistics: {exc}")
        return None


def _measure(
    settings: BenchSettings, runner: Runner, control: Control | None, progress: Progress
) -> list[StepResult]:
    import time

    steps = []
    phase_timeout = settings.max_step_secs + settings.client_timeout_s + 10.0
    for n, level in enumerate(settings.levels):
        label = f"concurrency {level:g}" if settings.mode == "concurrency" else f"rate {level:g}/s"
        if settings.warmup_request_count or settings.warmup_secs > 0:
            warm = _phase(settings, level, settings.seed + 10_000 + n, warmup=True)
            runner.run(_at(warm, time.monotonic() + 0.2), phase_timeout)
        before = _stats(control, settings)
        phase = _phase(settings, level, settings.seed + n, warmup=False)
        with progress.step(label, phase.count, phase.duration_s or 0.0, runner.completed):
            samples = runner.run(_at(phase, time.monotonic() + 0.2 * (settings.processes > 1)), phase_timeout)
        after = _stats(control, settings) if before is not None else None
        server: ServerBreakdown | None = (
            breakdown(before, after) if before is not None and after is not None else None
        )
        step = step_result(settings.mode, level, settings.batch_size, samples, server)
        steps.append(step)
        p99 = f"{step.latency.p99_us / 1000:.2f} ms" if step.latency else "-"
        _say(
            f"{label}: {step.infer_per_s:.1f} infer/s, p99 {p99}, {step.completed} ok, {step.errors} errors"
            + (f", {step.delayed} sent late" if step.delayed else "")
        )
        for message in step.error_messages:
            _say(f"  error: {message}")
    return steps


def _at(phase: Phase, start_at: float) -> Phase:
    from dataclasses import replace

    return replace(phase, start_at=start_at)


def run_bench(settings: BenchSettings) -> int:
    endpoint = Endpoint(
        settings.url, settings.protocol, settings.model, settings.version, settings.client_timeout_s
    )
    control: Control | None = None
    runner: Runner | None = None
    try:
        if settings.endpoint != "openai" or settings.server_stats:
            control = Control(endpoint)
            try:  # an OpenAI server may have no KServe side: one look, no waiting
                control.wait_ready(settings.wait_ready_secs if settings.endpoint != "openai" else 0.0)
            except ServerError as exc:
                if settings.endpoint != "openai":
                    raise
                _say(f"no server statistics (no KServe side to ask): {exc}")
                control.close()
                control = None  # an OpenAI-only server: no KServe side to ask
        spec = _sender_spec(settings, endpoint, control)
        if not settings.server_stats and control is not None:
            control.close()
            control = None
        runner = make_runner(spec, settings.processes)
        _say(
            f"meshserve bench: {settings.model} at {settings.protocol}://{settings.url}, "
            f"{settings.mode} {', '.join(f'{v:g}' for v in settings.levels)}, {settings.processes} process(es)"
        )
        with Progress(settings.progress) as progress:
            steps = _measure(settings, runner, control, progress)
    except (ServerError, InputError) as exc:
        _say(f"meshserve bench: error: {exc}")
        return 1
    finally:
        if runner is not None:
            runner.close()
        if control is not None:
            control.close()
    print(format_table(steps, settings.llm))
    _write_outputs(settings, steps)
    return 0 if all(s.completed > 0 for s in steps) else 1


def _write_outputs(settings: BenchSettings, steps: list[StepResult]) -> None:
    if settings.csv_file is not None:
        write_csv(settings.csv_file, steps, settings.llm)
        _say(f"wrote {settings.csv_file}")
    if settings.output_dir is None:
        return
    out = settings.output_dir
    write_json(out / "report.json", settings.as_dict(), steps)
    write_csv(out / "report.csv", steps, settings.llm)
    from meshserve.loadtool.plots import PlotsUnavailable, write_plots

    try:
        written = write_plots(out, steps, f"{settings.model} ({settings.protocol})", settings.llm)
    except PlotsUnavailable as exc:
        _say(str(exc))
        written = []
    _say(f"wrote {out / 'report.json'}, {out / 'report.csv'}" + "".join(f", {p}" for p in written))
