"""Model states in JetStream KV: keys, records, and how a gateway combines them with announcements."""

from __future__ import annotations

import pytest

from gateway.models import ModelTable
from meshserve.model_states import ModelStateRecord, combined_state, parse_key, state_key
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc


@pytest.mark.parametrize("name", ["simple", "a.b", "sp ace", "x*y>z", "ünï/cöde", "=", "", "%41"])
def test_keys_round_trip_any_model_name(name: str) -> None:
    key = state_key(name, 3)
    assert all(c.isascii() and (c.isalnum() or c in "-_=.") for c in key)
    assert key.count(".") == 1
    assert parse_key(key) == (name, 3)


def test_foreign_keys_are_ignored() -> None:
    assert parse_key("nodots") is None
    assert parse_key("model.notanumber") is None


def test_record_json_round_trip_and_garbage() -> None:
    record = ModelStateRecord("m", 2, "UNAVAILABLE", "failed to load: boom", 123)
    assert ModelStateRecord.from_json(record.to_json()) == record
    assert ModelStateRecord.from_json(b"not json") is None
    assert ModelStateRecord.from_json(b'{"model": "m", "version": 1, "state": "WEIRD"}') is None


def test_combined_state_precedence() -> None:
    unloading = ModelStateRecord("m", 1, "UNLOADING")
    failed = ModelStateRecord("m", 1, "UNAVAILABLE", "boom")
    ready = ModelStateRecord("m", 1, "READY")
    assert combined_state(True, "READY", unloading) == ("UNLOADING", "")
    assert combined_state(True, "READY", failed) == ("READY", None)  # live instances are the truth
    assert combined_state(False, "LOADING", failed) == ("UNAVAILABLE", "boom")
    assert combined_state(False, "UNAVAILABLE", ready) == ("UNAVAILABLE", None)  # READY needs a live instance
    assert combined_state(False, "LOADING", None) == ("LOADING", None)
    # an ensemble: no instances, its state derived from its steps by the gateway
    loading = ModelStateRecord("m", 1, "LOADING")
    assert combined_state(False, "READY", loading) == ("READY", None)
    assert combined_state(False, "UNAVAILABLE", loading) == ("UNAVAILABLE", None)


def _ready(model: str = "m") -> mesh_pb2.WorkerAnnouncement:
    config = mc.ModelConfig(name=model, backend="python")
    return mesh_pb2.WorkerAnnouncement(
        instance_id="w1",
        model_name=model,
        model_version=1,
        state=mesh_pb2.READY,
        model_config=config.SerializeToString(),
    )


def test_a_gateway_lists_models_it_knows_only_from_the_bucket() -> None:
    table = ModelTable(stale_after_s=5.0)
    table.apply(_ready())
    table.apply_record(ModelStateRecord("broken", 0, "UNAVAILABLE", "config.pbtxt: bad"))
    table.apply_record(ModelStateRecord("m", 1, "READY"))
    rows = {r["name"]: r for r in table.index_rows(ready_only=False)}
    assert rows["m"] == {"name": "m", "version": "1", "state": "READY", "reason": ""}
    assert rows["broken"] == {
        "name": "broken",
        "version": "",
        "state": "UNAVAILABLE",
        "reason": "config.pbtxt: bad",
    }
    assert [r["name"] for r in table.index_rows(ready_only=True)] == ["m"]
    assert "config.pbtxt: bad" in table.declared_error("broken")
    table.drop_record("broken", 0)
    assert "broken" not in table.names()


def test_unloading_shows_while_instances_finish_and_unloaded_does_not_count_against_readiness() -> None:
    table = ModelTable(stale_after_s=5.0)
    table.apply(_ready())
    table.apply_record(ModelStateRecord("m", 1, "UNLOADING"))
    assert table.index_rows(False)[0]["state"] == "UNLOADING"
    table.apply(
        mesh_pb2.WorkerAnnouncement(
            instance_id="w1", model_name="m", model_version=1, state=mesh_pb2.STOPPING
        )
    )
    table.apply_record(ModelStateRecord("m", 1, "UNAVAILABLE", "unloaded"))
    assert table.index_rows(False)[0] == {
        "name": "m",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }
    assert table.server_ready(strict=True)
