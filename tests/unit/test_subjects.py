"""NATS subjects: a model name is always exactly one subject token, and distinct names never collide."""

from __future__ import annotations

import itertools

import pytest

from meshserve import subjects

NASTY_NAMES = [
    "simple",
    "my.model",
    "a.b.c",
    "wild*card",
    "*",
    ">",
    "tail>",
    "with space",
    "tab\tname",
    "line\nbreak",
    "cr\rname",
    "100%",
    "%2E",
    "a%2Eb",
    "a%252Eb",
    "%",
    "%%",
    ".",
    "..",
    "",
    "ünïcödé.模型",
]

# Characters NATS gives meaning to in a subject token (or that split it).
_FORBIDDEN_IN_TOKEN = set(".*> \t\r\n")


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_model_token_is_one_nats_token(name: str) -> None:
    token = subjects.model_token(name)
    assert not _FORBIDDEN_IN_TOKEN & set(token), token


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_infer_subject_has_the_model_as_one_token(name: str) -> None:
    subject = subjects.infer(name, 3)
    parts = subject.split(".")
    assert parts == ["meshserve", "infer", subjects.model_token(name), "3"]
    assert subject.startswith(subjects.infer_all()[:-1])  # matched by the batchers' wildcard


def test_distinct_names_never_collide() -> None:
    tokens = {subjects.model_token(n) for n in NASTY_NAMES}
    assert len(tokens) == len(NASTY_NAMES)


def test_short_names_over_the_special_alphabet_never_collide() -> None:
    alphabet = ".*> %2E5a\t"
    names = ["".join(p) for n in range(4) for p in itertools.product(alphabet, repeat=n)]
    tokens = {subjects.model_token(n) for n in names}
    assert len(tokens) == len(names)


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("simple", "simple"),
        ("my.model", "my%2Emodel"),
        ("a*b", "a%2Ab"),
        ("a>b", "a%3Eb"),
        ("a b", "a%20b"),
        ("50%", "50%25"),
        ("%2E", "%252E"),
    ],
)
def test_escaping_is_percent_encoding(name: str, token: str) -> None:
    assert subjects.model_token(name) == token


def test_plain_names_are_unchanged() -> None:
    for name in ("resnet50", "add_sub", "model-v2", "ABC_123"):
        assert subjects.model_token(name) == name
        assert subjects.infer(name, 1) == f"meshserve.infer.{name}.1"


def test_fixed_subjects() -> None:
    assert subjects.infer_all() == "meshserve.infer.>"
    assert subjects.worker_announce() == "meshserve.worker.announce"
    assert subjects.worker_query() == "meshserve.worker.query"
    assert subjects.worker_announce() != subjects.worker_query()
    assert subjects.BATCHER_QUEUE_GROUP == "meshserve-batchers"
