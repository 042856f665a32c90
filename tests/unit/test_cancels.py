"""The worker's book of cancelled requests (workers/cancels.py): bounded, newest kept."""

from __future__ import annotations

from workers.cancels import CancelBook


def test_cancel_book_remembers_the_newest_subjects_only() -> None:
    book = CancelBook(capacity=3)
    for n in range(5):
        book.add(f"_INBOX.x.{n}")
    assert len(book) == 3
    assert "_INBOX.x.0" not in book and "_INBOX.x.1" not in book
    assert all(f"_INBOX.x.{n}" in book for n in (2, 3, 4))
    book.add("_INBOX.x.3")  # again: still three entries
    assert len(book) == 3
