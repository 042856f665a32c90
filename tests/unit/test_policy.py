"""Triton's dynamic-batching rules (shared/notes/triton-reference.md §3.1) as a pure function of the clock."""

from __future__ import annotations

import pytest

from batcher.policy import BatchingRules, Decision, Pending, Reason, decide

SIG = ("x", (3,))
OTHER_SIG = ("x", (4,))


def queue(*rows: int, start: float = 100.0, step: float = 0.001, sig: object = SIG) -> list[Pending]:
    return [Pending(arrival_s=start + i * step, rows=r, signature=sig) for i, r in enumerate(rows)]


def dyn(max_batch_size: int, preferred: tuple[int, ...] = (), delay_s: float = 0.0) -> BatchingRules:
    return BatchingRules(max_batch_size, dynamic=True, preferred_sizes=preferred, max_queue_delay_s=delay_s)


def test_empty_queue_sends_nothing_and_sets_no_timer() -> None:
    assert decide([], dyn(8, delay_s=1.0), now_s=0.0) == Decision(0, None, None)


# --------------------------------------------------------------------------------------------------
# DB11: no dynamic batching → one request at a time
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [
        BatchingRules(max_batch_size=8, dynamic=False),
        BatchingRules(max_batch_size=0, dynamic=True, preferred_sizes=(4,), max_queue_delay_s=1.0),
        BatchingRules(max_batch_size=0, dynamic=False),
    ],
)
def test_db11_without_dynamic_batching_each_request_goes_alone(rules: BatchingRules) -> None:
    decision = decide(queue(1, 1, 1, 1), rules, now_s=100.0)
    assert decision == Decision(1, None, Reason.NOT_BATCHING)


# --------------------------------------------------------------------------------------------------
# DB2: preferred sizes default to [max_batch_size]
# --------------------------------------------------------------------------------------------------


def test_db2_effective_preferred_defaults_to_max_batch_size() -> None:
    assert dyn(8).effective_preferred == (8,)
    assert dyn(8, preferred=(2, 4)).effective_preferred == (2, 4)
    assert BatchingRules(0, dynamic=False).effective_preferred == ()


def test_db2_default_preferred_is_reached_at_max_batch_size() -> None:
    # With a long delay, nothing goes until the batch fills to max_batch_size (the default preferred).
    rules = dyn(4, delay_s=10.0)
    assert decide(queue(1, 1, 1), rules, now_s=100.0).take == 0
    decision = decide(queue(1, 1, 1, 1, 1), rules, now_s=100.0)
    assert decision == Decision(4, None, Reason.PREFERRED_SIZE)


# --------------------------------------------------------------------------------------------------
# DB3: rows are summed, never above max_batch_size
# --------------------------------------------------------------------------------------------------


def test_db3_batch_size_is_the_sum_of_rows() -> None:
    # 2 + 3 + 1 = 6 rows is the preferred size: three requests, not six.
    decision = decide(queue(2, 3, 1, 5), dyn(8, preferred=(6,), delay_s=10.0), now_s=100.0)
    assert decision == Decision(3, None, Reason.PREFERRED_SIZE)


def test_db3_rows_not_requests_count_toward_max() -> None:
    # two requests of 4 rows fill max_batch_size 8 even though only two requests are taken
    decision = decide(queue(4, 4, 1), dyn(8, preferred=(3,), delay_s=10.0), now_s=100.0)
    assert decision.take == 2
    assert decision.reason is Reason.MAX_BATCH_SIZE


def test_db3_head_larger_than_max_goes_alone() -> None:
    decision = decide(queue(9, 1), dyn(8, delay_s=10.0), now_s=100.0)
    assert decision == Decision(1, None, Reason.MAX_BATCH_SIZE)


# --------------------------------------------------------------------------------------------------
# DB4: scan stops at a signature change or at overflow
# --------------------------------------------------------------------------------------------------


def test_db4_scan_stops_at_a_different_signature_and_sends_now() -> None:
    q = [*queue(1, 1), *queue(1, 1, start=100.01, sig=OTHER_SIG), *queue(1, start=100.02)]
    decision = decide(q, dyn(8, delay_s=10.0), now_s=100.0)
    # the third request cannot join; the fifth (same signature as head) is not reached: arrival order holds
    assert decision == Decision(2, None, Reason.BLOCKED)


def test_db4_scan_stops_at_overflow_and_sends_now() -> None:
    # 3 + 3 = 6; the next 3 would make 9 > 8, so the scan is blocked and 6 rows go now (no waiting)
    decision = decide(queue(3, 3, 3), dyn(8, delay_s=10.0), now_s=100.0)
    assert decision == Decision(2, None, Reason.BLOCKED)


def test_db4_overflowing_request_is_not_skipped_for_a_smaller_later_one() -> None:
    # 5 fits, 4 would overflow (9 > 8); the later 3 would fit but must not jump the queue
    decision = decide(queue(5, 4, 3), dyn(8, delay_s=10.0), now_s=100.0)
    assert decision.take == 1
    assert decision.reason is Reason.BLOCKED


def test_db4_equal_signatures_of_distinct_objects_batch_together() -> None:
    q = [Pending(100.0, 1, ("IN", (3,))), Pending(100.0, 1, ("IN", (3,)))]
    assert decide(q, dyn(2), now_s=100.0) == Decision(2, None, Reason.PREFERRED_SIZE)


# --------------------------------------------------------------------------------------------------
# DB5: the largest preferred prefix goes now
# --------------------------------------------------------------------------------------------------


def test_db5_largest_preferred_prefix_is_sent_immediately() -> None:
    rules = dyn(16, preferred=(2, 4), delay_s=10.0)
    # rows: 1, 2 (pref), 3, 4 (pref), 5 ... the largest preferred prefix is 4 requests
    decision = decide(queue(1, 1, 1, 1, 1), rules, now_s=100.0)
    assert decision == Decision(4, None, Reason.PREFERRED_SIZE)


def test_db5_preferred_beats_waiting_for_the_delay() -> None:
    decision = decide(queue(1, 1), dyn(8, preferred=(2,), delay_s=10.0), now_s=100.0)
    assert decision == Decision(2, None, Reason.PREFERRED_SIZE)


def test_db5_smaller_preferred_prefix_is_used_when_larger_is_not_reached() -> None:
    # rows accumulate 2, 4, 7 and then blocked by overflow (7 + 3 > 8): 4 is the best preferred prefix
    decision = decide(queue(2, 2, 3, 3), dyn(8, preferred=(2, 4, 8), delay_s=10.0), now_s=100.0)
    assert decision == Decision(2, None, Reason.PREFERRED_SIZE)


def test_db5_preferred_sizes_skipped_over_do_not_count() -> None:
    # rows go 3, 6: preferred 4 is never hit exactly, so no preferred prefix; wait for the delay
    decision = decide(queue(3, 3), dyn(8, preferred=(4,), delay_s=1.0), now_s=100.0)
    assert decision == Decision(0, wake_at_s=101.0)


# --------------------------------------------------------------------------------------------------
# DB6: no queue delay → send what the scan found now
# --------------------------------------------------------------------------------------------------


def test_db6_without_delay_sends_what_the_scan_found() -> None:
    decision = decide(queue(1, 2), dyn(8, preferred=(4, 8)), now_s=100.0)
    assert decision == Decision(2, None, Reason.NO_DELAY)


def test_db6_without_delay_a_single_request_goes() -> None:
    assert decide(queue(1), dyn(8), now_s=0.0) == Decision(1, None, Reason.NO_DELAY)


# --------------------------------------------------------------------------------------------------
# DB7: with a delay, wait until the oldest request has waited it
# --------------------------------------------------------------------------------------------------


def test_db7_waits_and_says_when_to_wake() -> None:
    rules = dyn(8, delay_s=0.5)
    q = queue(1, 2, start=100.0, step=0.1)
    decision = decide(q, rules, now_s=100.2)
    assert decision.take == 0
    assert decision.reason is None
    assert decision.wake_at_s == pytest.approx(100.5)  # head arrival + delay, not the newest arrival


def test_db7_sends_once_the_oldest_has_waited_the_delay() -> None:
    rules = dyn(8, delay_s=0.5)
    q = queue(1, 2, start=100.0, step=0.1)
    assert decide(q, rules, now_s=100.4999).take == 0
    assert decide(q, rules, now_s=100.5) == Decision(2, None, Reason.QUEUE_DELAY)
    assert decide(q, rules, now_s=250.0) == Decision(2, None, Reason.QUEUE_DELAY)


def test_db7_blocked_scan_sends_now_instead_of_waiting() -> None:
    rules = dyn(8, delay_s=5.0)
    q = [*queue(1, 1), *queue(1, start=100.1, sig=OTHER_SIG)]
    decision = decide(q, rules, now_s=100.0)  # nobody has waited: not due, but waiting cannot help
    assert decision == Decision(2, None, Reason.BLOCKED)


def test_db7_full_batch_sends_even_when_not_preferred() -> None:
    # max_batch_size reached but not among the preferred sizes: waiting cannot grow it
    decision = decide(queue(4, 4), dyn(8, preferred=(2,), delay_s=5.0), now_s=100.0)
    assert decision == Decision(2, None, Reason.MAX_BATCH_SIZE)


def test_decision_defaults() -> None:
    assert Decision(3) == Decision(3, None, None)
    assert Reason.QUEUE_DELAY.value == "queue_delay"
