"""Priority levels and queue policies (batcher/queues.py): Triton's DB9 and DB10, time injected."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from batcher.model_rules import rules_from_config, signature_of
from batcher.queues import PriorityQueues, QueuePolicy
from meshserve.model_config import parse_config
from meshserve.pb import mesh_pb2


@dataclass
class Item:
    name: str
    queue_deadline_s: float | None = None
    deadline_s: float | None = None


def names(items: object) -> list[str]:
    return [i.name for i in items]  # type: ignore[attr-defined]


def test_levels_are_served_highest_first_and_fifo_within_a_level() -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy()] * 3, default_level=2)
    for name, level in (("a2", 2), ("b3", 3), ("c1", 1), ("d2", 2), ("e1", 1)):
        q.push(Item(name), level)
    assert names(q.ordered()) == ["c1", "e1", "a2", "d2", "b3"]
    assert names(q.pop_front(3)) == ["c1", "e1", "a2"]
    assert names(q.ordered()) == ["d2", "b3"]
    assert len(q) == 2


@pytest.mark.parametrize(("priority", "level"), [(0, 2), (1, 1), (3, 3), (4, 2), (99, 2)])
def test_priority_zero_or_out_of_range_means_the_default_level(priority: int, level: int) -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy()] * 3, default_level=2)
    assert q.level_of(priority) == level


def test_max_queue_size_is_per_level_and_zero_means_unbounded() -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy(max_queue_size=2), QueuePolicy()])
    q.push(Item("a"), 1)
    assert not q.full(1)
    q.push(Item("b"), 1)
    assert q.full(1)
    for i in range(50):
        q.push(Item(f"x{i}"), 2)
    assert not q.full(2)


def test_reject_answers_requests_whose_queue_timeout_passed() -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy(default_timeout_s=0.01)])
    q.push(Item("late", queue_deadline_s=10.0), 1)
    q.push(Item("fine", queue_deadline_s=20.0), 1)
    assert q.next_due() == 10.0
    assert names(q.expire(9.99).rejected) == []
    expired = q.expire(10.0)
    assert names(expired.rejected) == ["late"]
    assert names(q.ordered()) == ["fine"]


def test_delay_moves_a_timed_out_request_behind_its_level_but_ahead_of_lower_levels() -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy(delay_on_timeout=True), QueuePolicy()])
    q.push(Item("slow", queue_deadline_s=1.0), 1)
    q.push(Item("next", queue_deadline_s=50.0), 1)
    q.push(Item("low"), 2)
    expired = q.expire(2.0)
    assert expired.rejected == [] and expired.abandoned == []
    assert names(q.ordered()) == ["next", "slow", "low"]
    q.push(Item("newer"), 1)
    assert names(q.ordered()) == ["next", "newer", "slow", "low"]
    assert q.expire(100.0).rejected == []  # a delayed request is not timed out twice


def test_requester_deadline_abandons_even_delayed_requests() -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy(delay_on_timeout=True)])
    q.push(Item("a", queue_deadline_s=1.0, deadline_s=5.0), 1)
    q.expire(2.0)
    assert names(q.ordered()) == ["a"]
    assert q.next_due() == 5.0
    assert names(q.expire(5.0).abandoned) == ["a"]
    assert len(q) == 0


@pytest.mark.parametrize(
    ("policy", "request_timeout", "expected"),
    [
        (QueuePolicy(), 0.0, None),
        (QueuePolicy(), 0.5, None),  # no override allowed: the request's timeout is ignored
        (QueuePolicy(default_timeout_s=2.0), 0.5, 12.0),
        (QueuePolicy(default_timeout_s=2.0, allow_timeout_override=True), 0.5, 10.5),
        (QueuePolicy(default_timeout_s=2.0, allow_timeout_override=True), 5.0, 12.0),  # only shorter
        (QueuePolicy(allow_timeout_override=True), 0.5, 10.5),
    ],
)
def test_queue_deadline_with_and_without_override(
    policy: QueuePolicy, request_timeout: float, expected: float | None
) -> None:
    assert policy.queue_deadline(10.0, request_timeout) == expected


CONFIG = """
name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "A", data_type: TYPE_FP32, dims: [ -1 ], allow_ragged_batch: true },
        { name: "B", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "C", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 1500
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy { max_queue_size: 7, default_timeout_microseconds: 1000, timeout_action: DELAY }
  priority_queue_policy { key: 1 value { max_queue_size: 2, allow_timeout_override: true } }
}
"""


def test_rules_from_config_reads_levels_policies_and_ragged_inputs() -> None:
    rules = rules_from_config(parse_config(CONFIG))
    assert rules.batching.preferred_sizes == (4,)
    assert rules.batching.max_queue_delay_s == pytest.approx(0.0015)
    assert rules.default_level == 2
    assert len(rules.policies) == 3
    assert rules.policies[0] == QueuePolicy(max_queue_size=2, allow_timeout_override=True)
    assert rules.policies[1] == QueuePolicy(max_queue_size=7, default_timeout_s=0.001, delay_on_timeout=True)
    assert rules.policies[2] == rules.policies[1]
    assert rules.ragged_inputs == frozenset({"A"})


def test_rules_without_dynamic_batching_have_one_plain_level() -> None:
    rules = rules_from_config(parse_config('name: "m"\nbackend: "python"\nmax_batch_size: 4'))
    assert not rules.batching.dynamic
    assert rules.policies == (QueuePolicy(),) and rules.default_level == 1


def test_signature_ignores_the_shape_of_ragged_inputs_only() -> None:
    def request(a_len: int, b_len: int) -> mesh_pb2.InferRequest:
        r = mesh_pb2.InferRequest()
        r.inputs.add(name="A", datatype="FP32", shape=[1, a_len])
        r.inputs.add(name="B", datatype="FP32", shape=[1, b_len])
        return r

    ragged = frozenset({"A"})
    assert signature_of(request(3, 4), ragged) == signature_of(request(9, 4), ragged)
    assert signature_of(request(3, 4), ragged) != signature_of(request(3, 5), ragged)
    assert signature_of(request(3, 4)) != signature_of(request(9, 4))


def test_remove_where_takes_a_cancelled_request_out_of_any_level_and_keeps_the_order() -> None:
    q: PriorityQueues[Item] = PriorityQueues([QueuePolicy(delay_on_timeout=True)] * 2, default_level=2)
    for name, level in (("a1", 1), ("x2", 2), ("b2", 2), ("x1", 1)):
        q.push(Item(name, queue_deadline_s=5.0 if name == "b2" else None), level)
    q.expire(10.0)  # b2 moves to level 2's delayed FIFO
    assert names(q.remove_where(lambda item: item.name.startswith("x"))) == ["x1", "x2"]
    assert names(q.ordered()) == ["a1", "b2"]
    assert q.remove_where(lambda item: item.name == "b2")[0].name == "b2"
    assert names(q.ordered()) == ["a1"] and len(q) == 1
    assert q.remove_where(lambda item: False) == []
