"""The gateway's model table (models.py): state from worker announcements and the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.models import ModelState, ModelTable, ModelView, TensorSpec, parse_version
from meshserve.controller import REMOVED_REASON
from meshserve.errors import InvalidArgument, ModelNotFound, ModelNotReady
from meshserve.model_config import CONFIG_FILENAME, complete_config, parse_config
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc

STALE_S = 5.0

CONFIG = """
backend: "python"
max_batch_size: 4
input [
  { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "MASK" data_type: TYPE_BOOL dims: [ 3 ] optional: true }
]
output [ { name: "SCORE" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def config(name: str = "m", text: str = CONFIG) -> mc.ModelConfig:
    cfg = parse_config(text)
    complete_config(cfg, name)
    return cfg


def announce(
    instance: str,
    state: int = mesh_pb2.READY,
    model: str = "m",
    version: int = 1,
    reason: str = "",
    cfg: mc.ModelConfig | None = None,
    with_config: bool = True,
) -> mesh_pb2.WorkerAnnouncement:
    ann = mesh_pb2.WorkerAnnouncement(
        instance_id=instance, model_name=model, model_version=version, state=state, reason=reason
    )
    if with_config:
        ann.model_config = (cfg or config(model)).SerializeToString()
    return ann


def table(*anns: mesh_pb2.WorkerAnnouncement, stale_after_s: float = STALE_S) -> ModelTable:
    t = ModelTable(stale_after_s=stale_after_s)
    for ann in anns:
        t.apply(ann)
    return t


def age(view: ModelView, seconds: float) -> None:
    """Pretend every instance of ``view`` last announced ``seconds`` ago."""
    for instance in view.instances:
        view.instances[instance] -= seconds


# --------------------------------------------------------------------------------------------------
# ModelView from a config
# --------------------------------------------------------------------------------------------------


def test_view_from_config_digests_inputs_and_outputs() -> None:
    view = ModelView.from_config("m", 2, config())
    assert view.max_batch_size == 4
    assert view.platform == "python"
    assert view.inputs == {
        "TEXT": TensorSpec("TEXT", "BYTES", (-1,), False),
        "MASK": TensorSpec("MASK", "BOOL", (3,), True),
    }
    assert view.outputs == {"SCORE": TensorSpec("SCORE", "FP32", (2,), False)}


# --------------------------------------------------------------------------------------------------
# Readiness from announcements
# --------------------------------------------------------------------------------------------------


def test_a_ready_announcement_makes_the_version_ready() -> None:
    t = table(announce("w1"))
    view = t.ready_view("m")
    assert (view.name, view.version) == ("m", 1)
    assert t.state(view) is ModelState.READY
    assert list(view.instances) == ["w1"]
    assert view.inputs["TEXT"].datatype == "BYTES"


def test_loading_announcement_keeps_the_version_not_ready() -> None:
    t = table(announce("w1", state=mesh_pb2.LOADING))
    view = t.find("m")
    assert t.state(view) is ModelState.LOADING
    with pytest.raises(ModelNotReady) as err:
        t.ready_view("m")
    assert str(err.value) == "Request for model 'm' version 1: the model is not ready yet (loading)"


def test_failure_reason_is_surfaced_in_model_not_ready() -> None:
    t = table(announce("w1", state=mesh_pb2.UNAVAILABLE, reason="failed to load: boom"))
    assert t.state(t.find("m")) is ModelState.UNAVAILABLE
    with pytest.raises(ModelNotReady) as err:
        t.ready_view("m")
    assert str(err.value) == "Request for unknown model: 'm' has no available versions (failed to load: boom)"
    assert err.value.http_status == 503


def test_failure_without_reason_says_failed_to_load() -> None:
    t = table(announce("w1", state=mesh_pb2.UNAVAILABLE))
    assert t.find("m").reason() == "failed to load"


def test_one_ready_instance_wins_over_another_failed_one() -> None:
    t = table(announce("w1", state=mesh_pb2.UNAVAILABLE, reason="oom"), announce("w2"))
    assert t.state(t.ready_view("m")) is ModelState.READY
    # and a later READY from the failed instance clears its failure
    t.apply(announce("w1"))
    assert t.find("m").failures == {}
    assert sorted(t.find("m").instances) == ["w1", "w2"]


def test_stopping_instance_leaves_the_pool() -> None:
    t = table(announce("w1"), announce("w2"))
    t.apply(announce("w1", state=mesh_pb2.STOPPING))
    assert list(t.find("m").instances) == ["w2"]
    t.apply(announce("w2", state=mesh_pb2.STOPPING))
    assert t.state(t.find("m")) is ModelState.LOADING
    with pytest.raises(ModelNotReady):
        t.ready_view("m")


def test_ready_instance_that_fails_later_leaves_the_pool_with_its_reason() -> None:
    t = table(announce("w1"))
    t.apply(announce("w1", state=mesh_pb2.UNAVAILABLE, reason="crashed"))
    view = t.find("m")
    assert view.instances == {}
    assert view.failures == {"w1": "crashed"}
    assert t.state(view) is ModelState.UNAVAILABLE


def test_a_reload_config_arrives_with_its_first_ready_instance_and_stays() -> None:
    other = config(text=CONFIG.replace("max_batch_size: 4", "max_batch_size: 2"))
    t = table(announce("w1"))
    t.apply(announce("w2", state=mesh_pb2.LOADING, cfg=other))
    assert t.find("m").max_batch_size == 4  # not before the new instance is READY
    t.apply(announce("w2", cfg=other))
    assert t.find("m").max_batch_size == 2
    t.apply(announce("w1"))  # the old instance's heartbeat does not flip it back
    assert t.find("m").max_batch_size == 2
    t.apply(announce("w1", state=mesh_pb2.STOPPING))
    view = t.find("m")
    assert view.max_batch_size == 2 and list(view.instances) == ["w2"]


def test_controller_removal_marker_forgets_the_model_or_one_version() -> None:
    t = table(announce("w1"), announce("w2", version=2))
    t.apply(announce("controller:m:2", version=2, state=mesh_pb2.UNAVAILABLE, reason=REMOVED_REASON))
    assert [v.version for v in t.versions_of("m")] == [1]
    t.apply(announce("controller:m:0", version=0, state=mesh_pb2.UNAVAILABLE, reason=REMOVED_REASON))
    assert t.versions_of("m") == [] and "m" not in t.names()


def test_controller_failure_marker_makes_a_new_broken_model_visible() -> None:
    t = table()
    t.apply(
        announce(
            "controller:n:1",
            model="n",
            state=mesh_pb2.UNAVAILABLE,
            reason="config.pbtxt: bad",
            with_config=False,
        )
    )
    assert "n" in t.names() and t.declared_error("n") == "config.pbtxt: bad"


def test_announcement_without_config_for_an_unknown_model_is_ignored() -> None:
    t = table(announce("w1", with_config=False))
    assert t.names() == []
    with pytest.raises(ModelNotFound):
        t.find("m")


# --------------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------------


def test_empty_version_picks_the_highest_ready_version() -> None:
    t = table(
        announce("a", version=1),
        announce("b", version=2),
        announce("c", version=3, state=mesh_pb2.LOADING),
    )
    assert [v.version for v in t.versions_of("m")] == [1, 2, 3]
    assert t.find("m").version == 2
    assert t.ready_view("m").version == 2


def test_empty_version_with_none_ready_picks_the_highest() -> None:
    t = table(
        announce("a", version=1, state=mesh_pb2.LOADING),
        announce("b", version=4, state=mesh_pb2.UNAVAILABLE, reason="bad"),
    )
    assert t.find("m").version == 4
    with pytest.raises(ModelNotReady, match=r"\(bad\)"):
        t.ready_view("m")


def test_explicit_version_is_served_even_when_not_the_highest() -> None:
    t = table(announce("a", version=1), announce("b", version=2))
    assert t.ready_view("m", "1").version == 1
    assert t.ready_view("m", "2").version == 2


def test_explicit_version_that_is_not_ready() -> None:
    t = table(announce("a", version=1), announce("b", version=2, state=mesh_pb2.UNAVAILABLE, reason="x"))
    assert t.find("m", "2").version == 2
    with pytest.raises(ModelNotReady, match=r"no available versions \(x\)"):
        t.ready_view("m", "2")


def test_unknown_model_uses_tritons_wording() -> None:
    with pytest.raises(ModelNotFound) as err:
        table(announce("a")).find("nope")
    assert str(err.value) == "Request for unknown model: 'nope' is not found"
    assert err.value.http_status == 404


def test_unknown_version_uses_tritons_wording() -> None:
    with pytest.raises(ModelNotFound) as err:
        table(announce("a")).ready_view("m", "7")
    assert str(err.value) == "Request for unknown model: 'm' version 7 is not found"


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            "abc",
            "failed to get model version from specified version string 'abc' (details: stol), "
            "version should be an integral value > 0",
        ),
        ("0", "invalid model version specified '0' , version should be an integral value > 0"),
        ("-3", "invalid model version specified '-3' , version should be an integral value > 0"),
    ],
)
def test_parse_version_errors(version: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_version(version)
    assert str(err.value) == message
    # find checks the version string before the model name
    with pytest.raises(InvalidArgument) as err:
        table().find("whatever", version)
    assert str(err.value) == message


def test_parse_version_accepts_positive_integers() -> None:
    assert parse_version("1") == 1
    assert parse_version("42") == 42


# --------------------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------------------


def test_a_silent_instance_goes_stale() -> None:
    t = table(announce("w1"), stale_after_s=0.5)
    view = t.ready_view("m")
    age(view, 0.3)
    assert t.state(view) is ModelState.READY
    age(view, 0.3)
    assert t.state(view) is ModelState.UNAVAILABLE
    with pytest.raises(ModelNotReady, match="workers stopped announcing"):
        t.ready_view("m")
    # a fresh heartbeat brings it back
    t.apply(announce("w1"))
    assert t.ready_view("m") is view


def test_stale_instance_with_failures_reads_unavailable() -> None:
    t = table(
        announce("w1"), announce("w2", state=mesh_pb2.UNAVAILABLE, reason="gpu gone"), stale_after_s=0.05
    )
    view = t.find("m")
    age(view, 1.0)
    assert t.state(view) is ModelState.UNAVAILABLE
    with pytest.raises(ModelNotReady, match=r"\(gpu gone\)"):
        t.ready_view("m")


def test_stale_highest_version_falls_back_to_a_live_lower_one() -> None:
    t = table(announce("a", version=1), announce("b", version=2), stale_after_s=0.05)
    age(t.find("m", "2"), 1.0)
    assert t.ready_view("m").version == 1


def test_view_state_uses_the_given_clock() -> None:
    view = ModelView.from_config("m", 1, config())
    view.instances["w"] = 100.0
    assert view.state(now=104.9, stale_after_s=5.0) is ModelState.READY
    assert view.state(now=105.0, stale_after_s=5.0) is ModelState.READY
    assert view.state(now=105.1, stale_after_s=5.0) is ModelState.UNAVAILABLE


# --------------------------------------------------------------------------------------------------
# Server readiness
# --------------------------------------------------------------------------------------------------


def test_server_ready_with_every_model_ready() -> None:
    t = table(announce("a", model="m"), announce("b", model="n"))
    assert t.server_ready(strict=True) is True
    assert t.server_ready(strict=False) is True


def test_server_not_ready_while_a_model_is_loading() -> None:
    t = table(announce("a", model="m"), announce("b", model="n", state=mesh_pb2.LOADING))
    assert t.server_ready(strict=True) is False
    assert t.server_ready(strict=False) is False


def test_failed_model_makes_only_strict_readiness_false() -> None:
    t = table(announce("a", model="m"), announce("b", model="n", state=mesh_pb2.UNAVAILABLE, reason="x"))
    assert t.server_ready(strict=True) is False
    assert t.server_ready(strict=False) is True


def test_stale_model_is_unavailable_for_readiness() -> None:
    """A model whose workers fell silent is settled (UNAVAILABLE), not loading: only strict mode cares."""
    t = table(announce("a"), stale_after_s=0.05)
    age(t.find("m"), 1.0)
    assert t.server_ready(strict=False) is True
    assert t.server_ready(strict=True) is False


# --------------------------------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------------------------------


def _model(root: Path, name: str, text: str | None, versions: list[str]) -> None:
    model_dir = root / name
    model_dir.mkdir()
    if text is not None:
        (model_dir / CONFIG_FILENAME).write_text(text, encoding="utf-8")
    for version in versions:
        (model_dir / version).mkdir()


def test_load_repository_lists_models_including_broken_ones(tmp_path: Path) -> None:
    _model(tmp_path, "good", CONFIG, ["1", "3"])
    _model(tmp_path, "broken", "max_batch_size: [", ["1"])
    _model(tmp_path, "noconfig", None, ["1"])
    _model(tmp_path, "noversion", CONFIG, [])
    t = ModelTable(stale_after_s=STALE_S)
    t.load_repository(tmp_path)

    assert t.names() == ["broken", "good", "noconfig", "noversion"]
    # the default version_policy serves only the highest version
    assert [v.version for v in t.versions_of("good")] == [3]
    good = t.find("good")
    assert good.inputs["TEXT"].datatype == "BYTES"
    assert t.state(good) is ModelState.LOADING
    assert t.declared_error("good") == ""

    assert "config.pbtxt" in t.declared_error("broken")
    with pytest.raises(ModelNotReady) as err:
        t.find("broken")
    assert str(err.value).startswith("Request for unknown model: 'broken' has no available versions (")
    assert t.declared_error("broken") in str(err.value)
    with pytest.raises(ModelNotReady, match=r"missing"):
        t.find("noconfig")
    with pytest.raises(ModelNotReady, match=r"matches its version_policy"):
        t.find("noversion")

    assert t.server_ready(strict=False) is False  # "good" is still loading
    t.apply(announce("w1", model="good", version=3, cfg=config("good")))
    assert t.ready_view("good").version == 3
    assert t.server_ready(strict=False) is True
    assert t.server_ready(strict=True) is False  # broken models declared


def test_worker_failure_updates_the_declared_error_of_a_model_without_view(tmp_path: Path) -> None:
    _model(tmp_path, "noversion", CONFIG, [])
    t = ModelTable(stale_after_s=STALE_S)
    t.load_repository(tmp_path)
    t.apply(
        announce(
            "w", model="noversion", state=mesh_pb2.UNAVAILABLE, reason="worker says no", with_config=False
        )
    )
    assert t.declared_error("noversion") == "worker says no"
    with pytest.raises(ModelNotReady, match=r"\(worker says no\)"):
        t.find("noversion")


def test_all_views_are_sorted_by_name_and_version() -> None:
    t = table(announce("a", model="z", version=2), announce("b", model="a"), announce("c", model="z"))
    assert [(v.name, v.version) for v in t.all_views()] == [("a", 1), ("z", 1), ("z", 2)]
