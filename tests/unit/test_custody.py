"""Custody bookkeeping: who holds each request, which batchers are alive, what a dead one orphans."""

from __future__ import annotations

from gateway.custody import CustodyBook, Held
from meshserve import custody


def held(published: float = 0.0) -> Held:
    return Held("meshserve.infer.m.1", b"req", deadline=published + 10.0, published=published)


def test_wire_words_round_trip_and_refuse_strangers() -> None:
    assert custody.decode_held(custody.encode_held("b1", ["3", "4"])) == ("b1", ["3", "4"])
    assert custody.decode_held(b"") == ("", [])
    assert custody.decode_heartbeat(custody.encode_heartbeat("b1")) == ("b1", True)
    assert custody.decode_heartbeat(custody.encode_heartbeat("b1", alive=False)) == ("b1", False)
    assert custody.decode_heartbeat(b"hello there world") is None
    assert custody.ack_subject("_INBOX.x") == "_INBOX.x.held"


def test_a_silent_holder_orphans_its_requests_only() -> None:
    book = CustodyBook(timeout_s=3.0)
    for token in ("1", "2", "3"):
        book.track(token, held())
    book.acknowledged("a", ["1"], now=0.1)
    book.acknowledged("b", ["2", "3"], now=0.1)
    book.heartbeat("a", True, now=2.0)
    book.heartbeat("b", True, now=2.0)
    assert book.orphans(now=4.9) == []
    book.heartbeat("b", True, now=4.0)  # a stops beating after 2.0
    orphans = book.orphans(now=5.5)
    assert [token for token, _ in orphans] == ["1"]
    assert book.live() == ["b"]
    assert book.orphans(now=5.6) == []  # reported once


def test_unacknowledged_requests_go_with_a_dead_batcher_after_the_grace() -> None:
    book = CustodyBook(timeout_s=3.0, unacked_grace_s=1.0)
    book.track("old", held(published=0.0))
    book.track("new", held(published=4.8))  # published just now: a live batcher will ack it
    book.heartbeat("a", True, now=1.0)
    assert [t for t, _ in book.orphans(now=5.0)] == ["old"]


def test_no_death_no_orphans_even_when_unacknowledged() -> None:
    book = CustodyBook(timeout_s=3.0)
    book.track("1", held())
    book.heartbeat("a", True, now=0.0)
    book.heartbeat("a", True, now=2.5)
    assert book.orphans(now=5.0) == []


def test_a_resent_request_is_tracked_anew_and_released_on_reply() -> None:
    book = CustodyBook(timeout_s=3.0)
    book.track("1", held())
    book.acknowledged("a", ["1"], now=0.0)
    ((token, h),) = book.orphans(now=3.5)
    book.resent(token, now=3.5)
    assert h.resent and h.holder == "" and h.published == 3.5
    book.acknowledged("b", ["1"], now=3.6)
    assert book.get("1") is not None and book.get("1").holder == "b"  # type: ignore[union-attr]
    book.release("1")
    assert len(book) == 0


def test_goodbye_orphans_what_is_left_after_the_grace_and_our_outage_is_not_theirs() -> None:
    book = CustodyBook(timeout_s=3.0, unacked_grace_s=1.0)
    book.track("1", held())
    book.acknowledged("a", ["1"], now=0.0)
    book.heartbeat("a", False, now=0.5)  # said goodbye with the request still held (not handed on)
    assert book.orphans(now=1.0) == []
    assert [t for t, _ in book.orphans(now=1.6)] == ["1"]

    other = CustodyBook(timeout_s=3.0)
    other.track("1", held())
    other.acknowledged("b", ["1"], now=0.0)
    other.reset_clock(now=10.0)  # the gateway's own NATS connection came back at 10.0
    assert other.orphans(now=11.0) == []


def test_a_request_with_a_worker_stays_with_it_when_its_batcher_dies_until_sent_back_to_a_queue() -> None:
    book = CustodyBook(timeout_s=3.0)
    book.track("1", held())
    book.track("2", held())
    book.acknowledged("a", ["1", "2", custody.WITH_WORKER + "1"], now=0.0)  # 1 went out in a batch
    assert [t for t, _ in book.orphans(now=3.5)] == ["2"]
    other = CustodyBook(timeout_s=3.0)
    other.track("1", held())
    other.acknowledged("a", [custody.WITH_WORKER + "1"], now=0.0)
    other.acknowledged("a", ["1"], now=0.5)  # its worker died: back in the queue for a retry
    assert [t for t, _ in other.orphans(now=4.0)] == ["1"]
