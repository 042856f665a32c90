"""`meshserve bench`'s load loops with a fake sender: bounds, concurrency, counts, errors, splitting."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from meshserve.loadtool.cli import add_bench_parser, main, settings_from_args
from meshserve.loadtool.load import Phase, Samples, merge, run_phase
from meshserve.loadtool.pool import split_phase
from meshserve.loadtool.streaming import StreamError, StreamTiming, parse_sse_line


class FakeServer:
    """Answers after ``delay_s``; fails every ``fail_every``-th request; tracks requests in flight."""

    def __init__(
        self, delay_s: float = 0.002, fail_every: int = 0, timing: StreamTiming | None = None
    ) -> None:
        self.delay_s, self.fail_every, self.timing = delay_s, fail_every, timing
        self.in_flight = self.peak = self.calls = 0
        self.indices: list[int] = []

    async def __call__(self, index: int) -> StreamTiming | None:
        self.calls += 1
        number = self.calls
        self.indices.append(index)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_every and number % self.fail_every == 0:
                raise RuntimeError("model failed")
            return self.timing
        finally:
            self.in_flight -= 1


def run(server: FakeServer, phase: Phase) -> tuple[Samples, int]:
    done = [0]

    def on_done() -> None:
        done[0] += 1

    return asyncio.run(run_phase(server, phase, on_done)), done[0]


def test_concurrency_by_count_sends_exactly_count_and_never_more_in_flight() -> None:
    server = FakeServer()
    samples, done = run(server, Phase(mode="concurrency", level=4, count=50, first_index=100))
    assert samples.sent == 50 == samples.completed == done == server.calls
    assert server.peak == 4
    assert sorted(server.indices) == list(range(100, 150))
    assert samples.window_s > 0


def test_concurrency_by_duration_stops_in_time() -> None:
    server = FakeServer(delay_s=0.01)
    samples, _ = run(server, Phase(mode="concurrency", level=2, duration_s=0.3))
    assert 0.25 < samples.window_s < 2.0  # generous: a shared machine
    assert 10 <= samples.completed <= 60


def test_count_mode_is_bounded_by_max_duration() -> None:
    server = FakeServer(delay_s=0.01)
    samples, _ = run(server, Phase(mode="concurrency", level=1, count=10_000, max_duration_s=0.2))
    assert samples.completed < 100


def test_errors_are_counted_and_kept() -> None:
    server = FakeServer(fail_every=3)
    samples, done = run(server, Phase(mode="concurrency", level=3, count=30))
    assert samples.errors == 10 and samples.completed == 20 and done == 30
    assert samples.error_messages == ["RuntimeError: model failed"]


def test_rate_mode_by_count_and_delayed() -> None:
    server = FakeServer(delay_s=0.05)
    samples, _ = run(server, Phase(mode="rate", level=200.0, count=40, distribution="constant"))
    assert samples.sent == samples.completed == 40
    assert server.peak > 1  # open loop: sends do not wait for answers
    # at 200/s, 40 requests take ~0.2 s to send, plus one 50 ms answer
    assert 0.2 < samples.window_s < 2.0


def test_rate_mode_max_inflight_holds_sends_back() -> None:
    server = FakeServer(delay_s=0.05)
    samples, _ = run(server, Phase(mode="rate", level=1000.0, count=20, max_inflight=2))
    assert server.peak == 2 and samples.completed == 20
    assert samples.delayed > 0  # could not keep 1000/s with 2 in flight of 50 ms


def test_stream_timings_are_recorded() -> None:
    server = FakeServer(timing=StreamTiming(ttft_ns=5_000, tokens=4, itl_ns=1_000))
    samples, _ = run(server, Phase(mode="concurrency", level=1, count=3))
    assert samples.ttft_ns == [5_000] * 3 and samples.itl_ns == [1_000] * 3 and samples.output_tokens == 12


def test_merge() -> None:
    a, b = Samples(), Samples()
    a.record(10, 20, None)
    b.record(5, 40, None)
    b.fail(50, 60, ValueError("x"))
    a.sent, b.sent = 1, 2
    total = merge([a, b])
    assert total.completed == 2 and total.errors == 1 and total.sent == 3
    assert total.first_start_ns == 5 and total.last_end_ns == 60


@pytest.mark.parametrize(
    ("phase", "processes", "levels", "counts"),
    [
        (Phase(mode="concurrency", level=5, count=11), 2, [3, 2], [6, 5]),
        (Phase(mode="concurrency", level=2, duration_s=1.0), 3, [1, 1], [None, None]),
        (Phase(mode="rate", level=90.0, duration_s=1.0), 3, [30.0, 30.0, 30.0], [None] * 3),
        (Phase(mode="rate", level=10.0, count=2), 3, [10 / 3] * 2, [1, 1]),
    ],
)
def test_split_phase(phase: Phase, processes: int, levels: list[float], counts: list[int | None]) -> None:
    shares = split_phase(phase, processes)
    assert [s.level for s in shares] == pytest.approx(levels)
    assert [s.count for s in shares] == counts
    assert len({s.seed for s in shares}) == len(shares) and len({s.first_index for s in shares}) == len(
        shares
    )


def test_split_constant_rate_staggers_the_processes() -> None:
    shares = split_phase(Phase(mode="rate", level=100.0, duration_s=1.0, start_at=50.0), 4)
    assert [s.start_at for s in shares] == pytest.approx([50.0, 50.01, 50.02, 50.03])
    poisson = split_phase(
        Phase(mode="rate", level=100.0, duration_s=1.0, distribution="poisson", start_at=5.0), 2
    )
    assert [s.start_at for s in poisson] == [5.0, 5.0]


def test_parse_sse_line() -> None:
    assert parse_sse_line(b'data: {"OUT": 7}\n') == {"OUT": 7}
    assert parse_sse_line(b"data: [DONE]\n") == "done"
    assert parse_sse_line(b"\n") is None and parse_sse_line(b": keep-alive\n") is None
    with pytest.raises(StreamError, match="in the model"):
        parse_sse_line(b'data: {"error": "failure in the model"}\n')
    with pytest.raises(StreamError, match="bad"):
        parse_sse_line(b'data: {"error": {"message": "bad request"}}\n')
    with pytest.raises(StreamError, match="not JSON"):
        parse_sse_line(b"data: {oops\n")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_settings_defaults_follow_perf_analyzer() -> None:
    s = settings_from_args(parse("-m", "simple"))
    assert s.protocol == "http" and s.url == "localhost:8000" and s.levels == (1.0,)
    assert s.mode == "concurrency" and s.measurement_interval_ms == 5000 and not s.llm
    g = settings_from_args(
        parse("-m", "simple", "-i", "grpc", "-u", "http://h:9/", "--request-rate-range", "5:10:5")
    )
    assert g.url == "h:9" and g.mode == "rate" and g.levels == (5.0, 10.0)
    assert settings_from_args(parse("-m", "r", "--llm")).endpoint == "generate"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--concurrency-range", "1", "--request-rate-range", "5"], "not both"),
        (["--concurrency-range", "0"], "at least 1"),
        (["-b", "0"], "batch-size"),
        (["--processes", "4", "--concurrency-range", "2"], "more than the lowest concurrency"),
        (["--endpoint", "openai", "-i", "grpc"], "use -i http"),
        (["--shape", "X"], "NAME:d1"),
    ],
)
def test_bad_flags_exit_2_with_a_message(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(parse("-m", "simple", *argv)) == 2
    assert problem in capsys.readouterr().err
