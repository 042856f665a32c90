"""PNG plots of a run (matplotlib, from the ``loadtool`` extra; imported only when plotting):
latency against throughput, and the latency percentiles at each level (plus TTFT/ITL in LLM mode)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meshserve.loadtool.report import StepResult

__all__ = ["PlotsUnavailable", "write_plots"]


class PlotsUnavailable(RuntimeError):
    pass


def write_plots(directory: Path, steps: Sequence[StepResult], title: str, llm: bool) -> list[Path]:
    """The PNG files written (none when no step completed a request)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("PNG plots need matplotlib: pip install 'meshserve[loadtool]'") from None
    measured = [s for s in steps if s.latency is not None]
    if not measured:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    unit = "concurrency" if measured[0].mode == "concurrency" else "request rate (req/s)"

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [s.infer_per_s for s in measured]
    for field, label in (("p50_us", "p50"), ("p99_us", "p99")):
        ax.plot(x, [getattr(s.latency, field) / 1000 for s in measured], marker="o", label=label)
    for s in measured:
        assert s.latency is not None
        ax.annotate(
            s.label,
            (s.infer_per_s, s.latency.p50_us / 1000),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}: latency vs throughput")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = directory / "latency_vs_throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [s.label for s in measured]
    positions = list(range(len(measured)))
    width = 0.2
    for k, (field, label) in enumerate(
        (("p50_us", "p50"), ("p90_us", "p90"), ("p95_us", "p95"), ("p99_us", "p99"))
    ):
        ax.bar(
            [p + (k - 1.5) * width for p in positions],
            [getattr(s.latency, field) / 1000 for s in measured],
            width=width,
            label=label,
        )
    ax.set_xticks(positions, labels)
    ax.set_xlabel(unit)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}: latency percentiles")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = directory / "latency_percentiles.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    if llm:
        streamed = [s for s in measured if s.ttft is not None]
        if streamed:
            fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
            labels = [s.label for s in streamed]
            for field, label in (("p50_us", "TTFT p50"), ("p99_us", "TTFT p99")):
                left.plot(labels, [getattr(s.ttft, field) / 1000 for s in streamed], marker="o", label=label)
            for field, label in (("p50_us", "ITL p50"), ("p99_us", "ITL p99")):
                left.plot(
                    labels,
                    [getattr(s.itl, field) / 1000 if s.itl else 0.0 for s in streamed],
                    marker="s",
                    label=label,
                )
            left.set_xlabel(unit)
            left.set_ylabel("ms")
            left.set_title("time to first token, inter-token latency")
            left.grid(True, alpha=0.3)
            left.legend()
            right.plot(labels, [s.output_tokens_per_s for s in streamed], marker="o")
            right.set_xlabel(unit)
            right.set_ylabel("output tokens/s")
            right.set_title("output token throughput")
            right.grid(True, alpha=0.3)
            fig.suptitle(title)
            fig.tight_layout()
            path = directory / "llm_latency.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written
