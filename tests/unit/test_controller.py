"""The model controller's load/unload decisions, with a fake launcher and a fake NATS connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format

from meshserve.controller import POLL_REFUSAL, REMOVED_REASON, UNLOADED_REASON, Controller
from meshserve.errors import Internal, ModelNotFound
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import ModelEntry


def _config(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    return config


PLAIN = 'backend: "python"'
PIPE = 'platform: "ensemble" ensemble_scheduling { step { model_name: "a" } step { model_name: "b" } }'
OTHER = 'platform: "ensemble" ensemble_scheduling { step { model_name: "b" } }'


class FakeOwner:
    def __init__(self, repo: Path, configs: dict[str, str]) -> None:
        self.repository = repo
        self.configs = configs
        self.running: list[str] = []
        self.events: list[str] = []
        self.broken: set[str] = set()
        self._entries: dict[str, ModelEntry] = {}

    def read_entry(self, name: str, repository: Path | None = None) -> ModelEntry | None:
        if name not in self.configs:
            return None
        return ModelEntry(name, self.repository / name, _config(self.configs[name]), (1,))

    def entry(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)

    async def start_model(self, name: str, repository: Path | None = None) -> list[dict[str, Any]]:
        entry = self.read_entry(name, repository)
        if entry is None:
            raise ModelNotFound(name)
        self.events.append(f"start {name}")
        if name in self.broken:
            return [{"state": "UNAVAILABLE", "reason": "boom"}]
        self._entries[name] = entry
        if "ensemble" in self.configs[name]:
            return []  # an ensemble has no worker of its own
        self.running.append(name)
        return [{"state": "READY"}]

    async def stop_model(self, name: str) -> None:
        self.events.append(f"stop {name}")
        if name in self.running:
            self.running.remove(name)


class FakeNats:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))

    def markers(self) -> list[tuple[str, str]]:
        out = []
        for subject, data in self.published:
            if subject.endswith("announce"):
                ann = mesh_pb2.WorkerAnnouncement.FromString(data)
                out.append((ann.model_name, ann.reason))
        return out


def _controller(owner: FakeOwner, mode: str = "explicit") -> tuple[Controller, FakeNats]:
    controller = Controller(owner, "nats://unused", mode)  # type: ignore[arg-type]
    nc = FakeNats()
    controller._nc = nc  # type: ignore[assignment]
    return controller, nc


def test_loading_an_ensemble_loads_its_steps_first_once(tmp_path: Path) -> None:
    owner = FakeOwner(tmp_path, {"pipe": PIPE, "a": PLAIN, "b": PLAIN})
    controller, _ = _controller(owner)
    asyncio.run(controller._load("pipe"))
    assert owner.events == ["start a", "start b", "start pipe"]
    asyncio.run(controller._load("pipe"))  # a reload: the steps are loaded already
    assert owner.events[3:] == ["start pipe"]


def test_unload_dependents_spares_steps_another_ensemble_uses(tmp_path: Path) -> None:
    owner = FakeOwner(tmp_path, {"pipe": PIPE, "other": OTHER, "a": PLAIN, "b": PLAIN})
    controller, nc = _controller(owner)

    async def scenario() -> None:
        await controller._load("pipe")
        await controller._load("other")
        await controller._unload("pipe", dependents=True)

    asyncio.run(scenario())
    assert owner.running == ["b"]
    assert ("a", UNLOADED_REASON) in nc.markers()
    assert ("b", UNLOADED_REASON) not in nc.markers()


def test_unload_without_dependents_leaves_the_steps(tmp_path: Path) -> None:
    owner = FakeOwner(tmp_path, {"pipe": PIPE, "a": PLAIN, "b": PLAIN})
    controller, _ = _controller(owner)
    asyncio.run(controller._load("pipe"))
    asyncio.run(controller._unload("pipe"))
    assert owner.running == ["a", "b"]


def test_a_failing_step_fails_the_ensemble_load(tmp_path: Path) -> None:
    owner = FakeOwner(tmp_path, {"pipe": PIPE, "a": PLAIN, "b": PLAIN})
    owner.broken.add("b")
    controller, _ = _controller(owner)
    with pytest.raises(Internal, match="failed to load 'b': boom"):
        asyncio.run(controller._load("pipe"))
    assert "start pipe" not in owner.events


def test_unloading_an_unknown_model_is_not_found(tmp_path: Path) -> None:
    controller, _ = _controller(FakeOwner(tmp_path, {}))
    with pytest.raises(ModelNotFound, match="no_such"):
        asyncio.run(controller._unload("no_such"))


def test_poll_mode_refuses_requests_with_tritons_words(tmp_path: Path) -> None:
    controller, nc = _controller(FakeOwner(tmp_path, {"a": PLAIN}), mode="poll")

    class Msg:
        data = mesh_pb2.ControlRequest(model_name="a", load=True).SerializeToString()
        reply = "inbox"

    asyncio.run(controller._on_request(Msg()))  # type: ignore[arg-type]
    reply = mesh_pb2.ControlReply.FromString(nc.published[-1][1])
    assert reply.error.code == "UNAVAILABLE" and reply.error.message == POLL_REFUSAL


def test_an_override_model_unloaded_is_withdrawn_not_marked_unloaded(tmp_path: Path) -> None:
    owner = FakeOwner(tmp_path, {"a": PLAIN})
    controller, nc = _controller(owner)
    controller._loaded["uploaded"] = None  # loaded from files only: the repository has no such model
    asyncio.run(controller._unload("uploaded"))
    assert ("uploaded", REMOVED_REASON) in nc.markers()


class GatedOwner(FakeOwner):
    """start_model of a model in ``gates`` waits until its gate opens; counts loads running at once."""

    def __init__(self, repo: Path, configs: dict[str, str]) -> None:
        super().__init__(repo, configs)
        self.gates: dict[str, asyncio.Event] = {}
        self.running_now: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}

    async def start_model(self, name: str, repository: Path | None = None) -> list[dict[str, Any]]:
        self.running_now[name] = self.running_now.get(name, 0) + 1
        self.most_at_once[name] = max(self.most_at_once.get(name, 0), self.running_now[name])
        try:
            gate = self.gates.get(name)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(0.01)
            return await super().start_model(name, repository)
        finally:
            self.running_now[name] -= 1


def test_a_slow_load_does_not_hold_up_another_models_load(tmp_path: Path) -> None:
    owner = GatedOwner(tmp_path, {"slow": PLAIN, "quick": PLAIN})
    owner.gates["slow"] = asyncio.Event()
    controller, _ = _controller(owner)

    async def scenario() -> None:
        slow = asyncio.create_task(controller._load("slow"))
        await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            await controller._load("quick")  # finishes while `slow` is still loading
        assert not slow.done()
        owner.gates["slow"].set()
        await slow

    asyncio.run(scenario())
    assert owner.events == ["start quick", "start slow"]


def test_loads_of_one_model_stay_one_at_a_time(tmp_path: Path) -> None:
    owner = GatedOwner(tmp_path, {"pipe": PIPE, "a": PLAIN, "b": PLAIN})
    controller, _ = _controller(owner)

    async def scenario() -> None:
        # two loads of the ensemble and one of its step model, at once
        await asyncio.gather(controller._load("pipe"), controller._load("pipe"), controller._load("a"))

    asyncio.run(scenario())
    assert max(owner.most_at_once.values()) == 1
    assert owner.events.count("start a") == 2  # once as a step (not loaded yet), once asked for
    assert owner.events.count("start b") == 1  # a step loaded once, not once per ensemble load
    assert owner.events.count("start pipe") == 2


def _loads_at_once(tmp_path: Path, names: list[str], threads: int) -> tuple[int, GatedOwner]:
    """Start a load of every model at once, each held at its gate; how many reached the owner."""
    owner = GatedOwner(tmp_path, dict.fromkeys(names, PLAIN))
    gate = asyncio.Event()
    for name in names:
        owner.gates[name] = gate
    controller = Controller(owner, "nats://unused", "explicit", load_threads=threads)  # type: ignore[arg-type]
    controller._nc = FakeNats()  # type: ignore[assignment]

    async def scenario() -> int:
        loads = [asyncio.create_task(controller._load(name)) for name in names]
        await asyncio.sleep(0.05)  # every load has reached the owner or waits for a slot
        at_once = sum(owner.running_now.values())
        gate.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*loads)
        return at_once

    return asyncio.run(scenario()), owner


def test_no_more_loads_at_once_than_the_load_thread_count(tmp_path: Path) -> None:
    names = [f"m{i}" for i in range(6)]
    for threads, expected in ((2, 2), (6, 6)):
        at_once, owner = _loads_at_once(tmp_path, names, threads)
        assert at_once == expected, threads
        assert sorted(owner.running) == names  # the ones that waited loaded too
