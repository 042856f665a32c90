"""Trace and log settings as pure logic: Triton's validation and wording, global/per-model merging and
clearing, rate/count sampling, file confinement, the shared bucket's encoding, and log settings
applied to Python's logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserve import log_settings
from meshserve.errors import InvalidArgument
from meshserve.log_settings import LogConfig
from meshserve.settings_store import _dispatch, decode_trace, encode_trace, trace_key
from meshserve.trace_settings import TraceBook, TraceConfig, confine, parse_update


def test_values_parse_from_http_strings_and_grpc_lists() -> None:
    update = parse_update(
        {
            "trace_rate": "10",
            "trace_count": ["-1"],
            "log_frequency": 5,
            "trace_level": ["tensors", "TIMESTAMPS"],
        }
    )
    assert update == {
        "trace_rate": 10,
        "trace_count": -1,
        "log_frequency": 5,
        "trace_level": ("TIMESTAMPS", "TENSORS"),
    }
    assert parse_update({"trace_level": ["OFF"]}) == {"trace_level": ()}
    # null (HTTP) and an empty value list (gRPC, tritonclient's None) clear a key
    assert parse_update({"trace_rate": None, "trace_count": []}) == {"trace_rate": None, "trace_count": None}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trace_rate": "x"}, "Unable to parse 'trace_rate', got: x"),
        (
            {"trace_rate": "0"},
            "Unable to parse 'trace_rate', value is out of range [ 1, 4294967295 ], got: 0",
        ),
        (
            {"trace_count": "-2"},
            "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ], got: -2",
        ),
        ({"log_frequency": "-1"}, "Unable to parse 'log_frequency', value is out of range"),
        ({"trace_rate": ["1", "2"]}, "trace setting 'trace_rate' takes one value, got 2"),
        ({"trace_rate": True}, "trace setting 'trace_rate' must be a string"),
        ({"trace_level": ["OFF", "TENSORS"]}, "Expect only one trace level 'OFF' is specified"),
        ({"trace_level": ["VERBOSE"]}, "unknown trace level 'VERBOSE'"),
        ({"trace_level": [1]}, "'trace_level' must be a list of strings"),
        ({"trace_mode": "triton"}, "trace_mode is fixed"),
        ({"rate": "1"}, "unknown trace setting 'rate'"),
    ],
)
def test_bad_trace_values_are_refused_clearly(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_update(raw)
    assert message in str(info.value)


def test_a_model_follows_the_global_settings_it_did_not_set() -> None:
    book = TraceBook(defaults=TraceConfig())
    book.set_model("m", book.merged("m", {"trace_rate": 5}))
    book.set_global(book.merged("", {"trace_level": ("TIMESTAMPS",), "trace_count": 9}))
    assert book.effective("m") == TraceConfig(level=("TIMESTAMPS",), rate=5, count=9)
    assert book.effective("other") == TraceConfig(level=("TIMESTAMPS",), rate=1000, count=9)
    # clearing the model's key: back to the global value; clearing a global key: back to the start value
    book.set_model("m", book.merged("m", {"trace_rate": None}))
    assert "m" not in book.model_overrides and book.effective("m").rate == 1000
    book.set_global(book.merged("", {"trace_count": None}))
    assert book.global_config().count == -1
    assert book.response("m")["trace_level"] == ["TIMESTAMPS"]
    assert TraceConfig().as_response()["trace_level"] == ["OFF"]


def test_sampling_takes_one_in_rate_until_the_count_is_spent() -> None:
    book = TraceBook(defaults=TraceConfig(level=("TIMESTAMPS",), rate=3, count=2))
    assert [book.sample("m") for _ in range(9)] == [
        True,
        False,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
    ]
    assert book.response("m")["trace_count"] == "0"
    # a model with its own rate has its own counters; the global scope's are untouched
    book.set_model("own", {"trace_rate": 1, "trace_count": -1})
    assert all(book.sample("own") for _ in range(5))
    assert book.response("own")["trace_count"] == "-1"
    # a new global setting starts the global counters over
    book.set_global({"trace_count": 1})
    assert [book.sample("m") for _ in range(4)] == [True, False, False, False]


def test_level_off_samples_nothing() -> None:
    book = TraceBook(defaults=TraceConfig(level=("TIMESTAMPS",), rate=1))
    book.set_model("quiet", {"trace_level": ()})
    assert not any(book.sample("quiet") for _ in range(5))
    assert book.sample("loud")


def test_files_stay_in_the_log_directory(tmp_path: Path) -> None:
    assert confine("t.jsonl", str(tmp_path), "trace file") == str(tmp_path / "t.jsonl")
    for bad in ("../t", "/etc/passwd", ".", str(tmp_path)):
        with pytest.raises(InvalidArgument, match="outside the log directory"):
            confine(bad, str(tmp_path), "log file")
    with pytest.raises(InvalidArgument, match="--log-dir"):
        confine("t", "", "log file")
    with pytest.raises(InvalidArgument, match="does not exist"):
        confine("no/such/dir/t.log", str(tmp_path), "log file")
    with pytest.raises(InvalidArgument, match="not a valid path"):
        confine("a\x00b", str(tmp_path), "log file")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InvalidArgument, match="is a directory"):
        confine("sub", str(tmp_path), "log file")
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(InvalidArgument, match="outside the log directory"):
        confine("link/x", str(tmp_path), "log file")


def test_trace_overrides_round_trip_through_the_bucket() -> None:
    overrides = {"trace_level": (), "trace_rate": 4, "trace_file": "/logs/t.jsonl"}
    assert decode_trace(encode_trace(overrides)) == overrides
    assert decode_trace(b"not json") is None and decode_trace(b"[1]") is None
    seen: list[tuple[str, dict[str, object], int]] = []
    logs: list[LogConfig] = []
    key = trace_key("a.b c")
    _dispatch(key, None, encode_trace({"trace_rate": 2}), 7, lambda *a: seen.append(a), logs.append)
    _dispatch(key, "DEL", b"", 8, lambda *a: seen.append(a), logs.append)
    _dispatch("log", None, LogConfig(log_verbose_level=2).to_json(), 9, None, logs.append)
    _dispatch("unrelated", None, b"{}", 10, lambda *a: seen.append(a), logs.append)
    assert seen == [("a.b c", {"trace_rate": 2}, 7), ("a.b c", {}, 8)]
    assert logs == [LogConfig(log_verbose_level=2)]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"log_info": "true"}, "'log_info' must be a boolean"),
        ({"log_verbose_level": True}, "must be an integer >= 0"),
        ({"log_verbose_level": -3}, "must be an integer >= 0"),
        ({"log_format": "json"}, "invalid argument for --log_format, got: json"),
        ({"log_file": 3}, "'log_file' must be a string"),
        ({"log_warnings": True}, "unknown log setting 'log_warnings'"),
    ],
)
def test_bad_log_values_are_refused_clearly(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        log_settings.parse_update(raw)
    assert message in str(info.value)


def test_null_log_values_change_nothing() -> None:
    config = LogConfig().with_update(log_settings.parse_update({"log_info": None, "log_verbose_level": 2}))
    assert config == LogConfig(log_verbose_level=2)
    assert LogConfig.from_json(config.to_json()) == config
    assert LogConfig.from_json(b'{"log_format": "xml"}') is None


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_log_switches_are_per_level_and_go_to_the_file(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "svc.log"
    config = LogConfig(log_file=str(path), log_info=False, log_verbose_level=1, log_format="ISO8601")
    log_settings.apply(config, "svc")
    log = logging.getLogger("meshserve.test")
    log.debug("a debug line")
    log.info("an info line")
    log.warning("a warning line")
    log_settings.apply(LogConfig(log_warning=False), "svc")  # back to stderr; the file is closed
    log.warning("not in the file")
    lines = path.read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["a debug line", "a warning line"]
    stamp = lines[0].split(" ")[0]
    assert stamp[10] == "T" and stamp.endswith("Z") and " svc[" in lines[0]


def test_the_gateway_refuses_what_it_cannot_honour(
    monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    import asyncio

    from gateway.runtime_settings import RuntimeSettings
    from meshserve import tracing

    monkeypatch.delenv("MESHSERVE_LOG_DIR", raising=False)
    runtime = RuntimeSettings(None, lambda name: name == "simple")

    async def calls() -> None:
        with pytest.raises(InvalidArgument, match="tracing has no exporter"):
            await runtime.trace_setting("", {"trace_level": ["TIMESTAMPS"]})
        with pytest.raises(InvalidArgument, match="tracing has no exporter"):
            await runtime.trace_setting("simple", {"trace_level": ["TIMESTAMPS"]})
        with pytest.raises(InvalidArgument, match="unless the server runs with --log-dir"):
            await runtime.trace_setting("", {"trace_file": "t.jsonl"})
        with pytest.raises(InvalidArgument, match="Request for unknown model : nope"):
            await runtime.trace_setting("nope", None)
        with pytest.raises(InvalidArgument, match="unless the server runs with --log-dir"):
            await runtime.log_setting({"log_file": "x.log"})
        # what needs no file works: settings kept, level off
        assert (await runtime.trace_setting("simple", {"trace_rate": "3"}))["trace_rate"] == "3"
        assert (await runtime.log_setting({"log_verbose_level": 1}))["log_verbose_level"] == 1
        assert (await runtime.log_setting({"log_file": ""}))["log_file"] == ""

    try:
        asyncio.run(calls())
        assert not tracing.enabled()
    finally:
        tracing.shutdown()
