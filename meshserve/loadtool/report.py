"""What one measurement gave (``StepResult``) and the run's outputs: a console table, perf_analyzer-
style CSV (``-f``), and ``report.json`` (everything, for scripts and for the plots)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshserve.loadtool.latency import LatencySummary, summarize
from meshserve.loadtool.load import Samples
from meshserve.loadtool.server_stats import ServerBreakdown

__all__ = ["StepResult", "format_table", "step_result", "write_csv", "write_json"]


@dataclass(frozen=True)
class StepResult:
    mode: Literal["concurrency", "rate"]
    level: float
    batch_size: int
    sent: int
    completed: int
    errors: int
    delayed: int
    window_s: float
    requests_per_s: float
    infer_per_s: float
    latency: LatencySummary | None
    server: ServerBreakdown | None
    ttft: LatencySummary | None = None
    itl: LatencySummary | None = None
    output_tokens: int = 0
    output_tokens_per_s: float = 0.0
    error_messages: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{int(self.level)}" if self.mode == "concurrency" else f"{self.level:g}/s"

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency" if self.mode == "concurrency" else "request_rate": (
                int(self.level) if self.mode == "concurrency" else self.level
            ),
            "batch_size": self.batch_size,
            "sent": self.sent,
            "completed": self.completed,
            "errors": self.errors,
            "delayed": self.delayed,
            "window_s": self.window_s,
            "requests_per_s": self.requests_per_s,
            "infer_per_s": self.infer_per_s,
            "latency_us": self.latency.as_dict() if self.latency else None,
            "server": self.server.as_dict() if self.server else None,
            "ttft_us": self.ttft.as_dict() if self.ttft else None,
            "itl_us": self.itl.as_dict() if self.itl else None,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens_per_s,
            "error_messages": list(self.error_messages),
        }


def step_result(
    mode: Literal["concurrency", "rate"],
    level: float,
    batch_size: int,
    samples: Samples,
    server: ServerBreakdown | None,
) -> StepResult:
    """Throughput is completed requests over the window from the first send to the last answer."""
    window = samples.window_s
    rps = samples.completed / window if window > 0 else 0.0
    return StepResult(
        mode=mode,
        level=level,
        batch_size=batch_size,
        sent=samples.sent,
        completed=samples.completed,
        errors=samples.errors,
        delayed=samples.delayed,
        window_s=window,
        requests_per_s=rps,
        infer_per_s=rps * batch_size,
        latency=summarize(samples.latencies_ns),
        server=server,
        ttft=summarize(samples.ttft_ns),
        itl=summarize(samples.itl_ns),
        output_tokens=samples.output_tokens,
        output_tokens_per_s=samples.output_tokens / window if window > 0 else 0.0,
        error_messages=tuple(samples.error_messages),
    )


def _us(summary: LatencySummary | None, field: str) -> str:
    return f"{getattr(summary, field):.0f}" if summary else ""


def csv_rows(steps: Sequence[StepResult], llm: bool) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        row: dict[str, Any] = {
            "Concurrency" if step.mode == "concurrency" else "Request Rate": f"{step.level:g}",
            "Inferences/Second": f"{step.infer_per_s:.2f}",
            "Requests": step.completed,
            "Errors": step.errors,
            "Server Queue": f"{step.server.avg_queue_us:.0f}" if step.server else "",
            "Server Compute Input": f"{step.server.avg_compute_input_us:.0f}" if step.server else "",
            "Server Compute Infer": f"{step.server.avg_compute_infer_us:.0f}" if step.server else "",
            "Server Compute Output": f"{step.server.avg_compute_output_us:.0f}" if step.server else "",
            "p50 latency": _us(step.latency, "p50_us"),
            "p90 latency": _us(step.latency, "p90_us"),
            "p95 latency": _us(step.latency, "p95_us"),
            "p99 latency": _us(step.latency, "p99_us"),
            "Avg latency": _us(step.latency, "avg_us"),
        }
        if llm:
            row.update(
                {
                    "TTFT p50": _us(step.ttft, "p50_us"),
                    "TTFT p99": _us(step.ttft, "p99_us"),
                    "ITL p50": _us(step.itl, "p50_us"),
                    "ITL p99": _us(step.itl, "p99_us"),
                    "Output Tokens/Second": f"{step.output_tokens_per_s:.2f}",
                }
            )
        rows.append(row)
    return rows


def write_csv(path: Path, steps: Sequence[StepResult], llm: bool) -> None:
    """perf_analyzer's ``-f`` layout where the columns exist here; times in microseconds."""
    rows = csv_rows(steps, llm)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["Concurrency"])
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, settings: dict[str, Any], steps: Sequence[StepResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"tool": "meshserve bench", "settings": settings, "steps": [s.as_dict() for s in steps]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def format_table(steps: Sequence[StepResult], llm: bool) -> str:
    """A plain-text table (milliseconds), one line per level."""
    head = [
        "level",
        "req/s",
        "infer/s",
        "ok",
        "err",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "queue ms",
        "compute ms",
    ]
    if llm:
        head += ["TTFT p50", "TTFT p99", "ITL p50", "tok/s"]
    lines = [head]
    for s in steps:
        lat = s.latency
        compute = (
            s.server.avg_compute_input_us + s.server.avg_compute_infer_us + s.server.avg_compute_output_us
            if s.server
            else None
        )
        row = [
            s.label,
            f"{s.requests_per_s:.1f}",
            f"{s.infer_per_s:.1f}",
            str(s.completed),
            str(s.errors),
            *(
                f"{getattr(lat, f) / 1000:.2f}" if lat else "-"
                for f in ("p50_us", "p90_us", "p95_us", "p99_us")
            ),
            f"{s.server.avg_queue_us / 1000:.2f}" if s.server else "-",
            f"{compute / 1000:.2f}" if compute is not None else "-",
        ]
        if llm:
            row += [
                f"{s.ttft.p50_us / 1000:.2f}" if s.ttft else "-",
                f"{s.ttft.p99_us / 1000:.2f}" if s.ttft else "-",
                f"{s.itl.p50_us / 1000:.2f}" if s.itl else "-",
                f"{s.output_tokens_per_s:.1f}",
            ]
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in lines)
