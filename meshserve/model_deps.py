"""Which models an ensemble depends on, read from its config alone (``ensemble_scheduling.step[].model_name``).

Model control uses it the way Triton does: loading an ensemble loads its composing models first
(those not loaded yet), and ``RepositoryModelUnload`` with ``unload_dependents`` also unloads the
composing models that no other loaded model still uses.  Pure: configs in, names out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from meshserve.pb import model_config_pb2 as mc

__all__ = ["composing_models", "dependents_to_unload", "load_order"]


def composing_models(config: mc.ModelConfig | None) -> list[str]:
    """The models an ensemble's steps call, each once, in step order ([] for any other model)."""
    if config is None:
        return []
    names: list[str] = []
    for step in config.ensemble_scheduling.step:
        if step.model_name and step.model_name not in names:
            names.append(step.model_name)
    return names


def load_order(name: str, config_of: Callable[[str], mc.ModelConfig | None]) -> list[str]:
    """``name`` and everything it composes, dependencies first (each once; a cycle is cut where it
    closes — the load of the model closing it then reports what is missing)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(model: str) -> None:
        if model in order or model in visiting:
            return
        visiting.add(model)
        for dep in composing_models(config_of(model)):
            visit(dep)
        visiting.discard(model)
        order.append(model)

    visit(name)
    return order


def dependents_to_unload(name: str, loaded: Mapping[str, mc.ModelConfig | None]) -> list[str]:
    """The models to unload with ``name`` under ``unload_dependents``: what it composes (recursively),
    less those a model that stays loaded still composes.  ``loaded`` maps every loaded model to its
    config.  Order: the ensemble's nearest dependencies first."""
    candidates = [m for m in load_order(name, lambda m: loaded.get(m)) if m != name and m in loaded]
    candidates.reverse()  # outermost first
    leaving = {name}
    for model in candidates:
        users = {
            other
            for other, config in loaded.items()
            if other not in leaving and other != model and model in composing_models(config)
        }
        if not users:
            leaving.add(model)
    return [m for m in candidates if m in leaving]
