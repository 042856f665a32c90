"""Ensemble dependencies read from configs: load order and what ``unload_dependents`` unloads."""

from __future__ import annotations

from google.protobuf import text_format

from meshserve.model_deps import composing_models, dependents_to_unload, load_order
from meshserve.pb import model_config_pb2 as mc


def _ensemble(*steps: str) -> mc.ModelConfig:
    text = 'platform: "ensemble"\nensemble_scheduling {\n'
    text += "".join(f'  step {{ model_name: "{s}" model_version: -1 }}\n' for s in steps)
    config = mc.ModelConfig()
    text_format.Parse(text + "}\n", config)
    return config


def _plain() -> mc.ModelConfig:
    return mc.ModelConfig(backend="python")


def test_composing_models_in_step_order_each_once() -> None:
    assert composing_models(_ensemble("pre", "net", "pre", "post")) == ["pre", "net", "post"]
    assert composing_models(_plain()) == []
    assert composing_models(None) == []


def test_load_order_puts_dependencies_first_and_nests() -> None:
    configs = {"e": _ensemble("a", "inner"), "inner": _ensemble("b", "a"), "a": _plain(), "b": _plain()}
    order = load_order("e", configs.get)
    assert order[-1] == "e"
    assert order.index("a") < order.index("inner") and order.index("b") < order.index("inner")
    assert sorted(order) == ["a", "b", "e", "inner"]


def test_load_order_survives_a_cycle_and_unknown_models() -> None:
    configs = {"x": _ensemble("y"), "y": _ensemble("x", "missing")}
    assert load_order("x", configs.get) == ["missing", "y", "x"]


def test_unload_dependents_spares_models_another_loaded_model_uses() -> None:
    loaded = {
        "e1": _ensemble("a", "shared"),
        "e2": _ensemble("shared"),
        "a": _plain(),
        "shared": _plain(),
        "other": _plain(),
    }
    assert dependents_to_unload("e1", loaded) == ["a"]
    del loaded["e2"]
    assert sorted(dependents_to_unload("e1", loaded)) == ["a", "shared"]


def test_unload_dependents_of_nested_ensembles() -> None:
    loaded = {
        "e": _ensemble("inner", "c"),
        "inner": _ensemble("a", "b"),
        "a": _plain(),
        "b": _plain(),
        "c": _plain(),
    }
    assert sorted(dependents_to_unload("e", loaded)) == ["a", "b", "c", "inner"]
    assert dependents_to_unload("e", loaded)[0] in ("inner", "c")  # users before what they use


def test_unload_dependents_of_a_plain_model_is_nothing() -> None:
    assert dependents_to_unload("a", {"a": _plain(), "e": _ensemble("a")}) == []


def test_only_loaded_composing_models_are_unloaded() -> None:
    assert dependents_to_unload("e", {"e": _ensemble("a", "b"), "a": _plain()}) == ["a"]
