"""`meshserve bench`'s range flags and schedules: pure parsing and seeded send times."""

from __future__ import annotations

import statistics

import pytest

from meshserve.loadtool.ranges import MAX_LEVELS, RangeError, parse_concurrency_range, parse_rate_range
from meshserve.loadtool.schedule import send_offsets


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        ("4", [4]),
        ("1:4", [1, 2, 3, 4]),
        ("1:64:16", [1, 17, 33, 49]),
        ("2:8:2", [2, 4, 6, 8]),
        (" 3 : 3 ", [3]),
    ],
)
def test_concurrency_range(text: str, levels: list[int]) -> None:
    assert parse_concurrency_range(text) == levels


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0:4", "start must be at least 1"),
        ("4:1", "below start"),
        ("1:4:0", "step must be at least 1"),
        ("1:x", "whole number"),
        ("1.5", "whole number"),
        ("1:2:3:4", "start:end:step"),
        ("", "start:end:step"),
        ("1::2", "start:end:step"),
        (f"1:{MAX_LEVELS + 1}", "at most"),
    ],
)
def test_concurrency_range_errors_say_what_to_fix(text: str, problem: str) -> None:
    with pytest.raises(RangeError, match=problem):
        parse_concurrency_range(text)


def test_rate_range() -> None:
    assert parse_rate_range("100") == [100.0]
    assert parse_rate_range("100:400:100") == [100.0, 200.0, 300.0, 400.0]
    assert parse_rate_range("50:150") == [50.0, 100.0, 150.0]  # step defaults to start
    assert parse_rate_range("0.5:1.5:0.5") == [0.5, 1.0, 1.5]
    assert parse_rate_range("0.1:0.3:0.1") == [0.1, 0.2, 0.3]  # float steps land on the end


@pytest.mark.parametrize(
    ("text", "problem"), [("0", "above 0"), ("5:1", "below start"), ("1:2:-1", "above 0")]
)
def test_rate_range_errors(text: str, problem: str) -> None:
    with pytest.raises(RangeError, match=problem):
        parse_rate_range(text)


def test_constant_schedule_is_evenly_spaced() -> None:
    assert send_offsets(4.0, "constant", count=5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    offsets = send_offsets(100.0, "constant", duration_s=1.0)
    assert len(offsets) == 100 and offsets[-1] < 1.0


def test_poisson_schedule_statistics() -> None:
    rate = 200.0
    offsets = send_offsets(rate, "poisson", count=20_000, seed=7)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.05)
    # exponential gaps: the standard deviation equals the mean (a constant schedule's is 0)
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.05)
    assert offsets == send_offsets(rate, "poisson", count=20_000, seed=7)  # seeded: repeatable
    assert offsets != send_offsets(rate, "poisson", count=20_000, seed=8)


def test_poisson_schedule_by_duration_stays_inside_it() -> None:
    offsets = send_offsets(500.0, "poisson", duration_s=2.0, seed=1)
    assert offsets and max(offsets) < 2.0
    assert len(offsets) == pytest.approx(1000, rel=0.15)


def test_schedule_argument_errors() -> None:
    with pytest.raises(ValueError, match="above 0"):
        send_offsets(0.0, "constant", count=1)
    with pytest.raises(ValueError, match="exactly one"):
        send_offsets(1.0, "constant", count=1, duration_s=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        send_offsets(1.0, "constant")
