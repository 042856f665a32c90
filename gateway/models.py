"""The gateway's table of models: what the repository declares and what live workers announce.

A model version is READY when at least one live instance announced READY; UNAVAILABLE with the
worker's reason when its instances failed to load; LOADING while nothing definite is known.  The
config comes from the workers' announcements (the config they actually loaded) or, before any
announcement, from the repository.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from meshserve.controller import CONTROLLER_ID_PREFIX, REMOVED_REASON, UNLOADED_REASON
from meshserve.ensemble import EnsemblePlan, check_signatures, is_ensemble, plan_of
from meshserve.errors import InvalidArgument, MeshError, ModelNotFound, ModelNotReady
from meshserve.model_config import config_from_bytes
from meshserve.model_states import ModelStateRecord, combined_state
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import scan_repository
from meshserve.tensors import config_type_to_datatype

__all__ = ["ModelState", "ModelTable", "ModelView", "TensorSpec"]


class ModelState(Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One declared input or output as a client sees it (the batch dim, if any, not included)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(slots=True)
class ModelView:
    """One model version: its config (pre-digested for validation) and its live state."""

    name: str
    version: int
    config: mc.ModelConfig
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    instances: dict[str, float] = field(default_factory=dict)
    """READY instance id → monotonic time of its last announcement."""
    failures: dict[str, str] = field(default_factory=dict)
    """Instance id → why it could not load."""
    ensemble: EnsemblePlan | None = None
    """Set for ``platform: "ensemble"``: no instances; its state follows its step models."""
    derived_reason: str = ""
    """An ensemble's reason, as its last state check found it."""
    derived_decoupled: bool = False
    """An ensemble with a decoupled step (nested ensembles included) is decoupled, as in Triton."""

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    @property
    def decoupled(self) -> bool:
        """0..N responses per request (``model_transaction_policy { decoupled: true }``)."""
        return bool(self.config.model_transaction_policy.decoupled) or self.derived_decoupled

    @classmethod
    def from_config(cls, name: str, version: int, config: mc.ModelConfig) -> ModelView:
        def spec(t: mc.ModelInput | mc.ModelOutput, optional: bool) -> TensorSpec:
            return TensorSpec(
                t.name, config_type_to_datatype(mc.DataType.Name(t.data_type)), tuple(t.dims), optional
            )

        return cls(
            name=name,
            version=version,
            config=config,
            inputs={t.name: spec(t, t.optional) for t in config.input},
            outputs={t.name: spec(t, False) for t in config.output},
            ensemble=plan_of(config) if is_ensemble(config) else None,
        )

    def live_instances(self, now: float, stale_after_s: float) -> int:
        return sum(1 for seen in self.instances.values() if now - seen <= stale_after_s)

    def state(self, now: float, stale_after_s: float) -> ModelState:
        if self.live_instances(now, stale_after_s):
            return ModelState.READY
        if self.failures or self.instances:
            return ModelState.UNAVAILABLE
        return ModelState.LOADING

    @property
    def unloaded(self) -> bool:
        """Unloaded on purpose (model control): not counted against server readiness."""
        return not self.instances and bool(self.failures) and set(self.failures.values()) == {UNLOADED_REASON}

    def reason(self) -> str:
        if self.ensemble is not None and self.derived_reason:
            return self.derived_reason
        if not self.failures and self.instances:
            return "no live instance: its workers stopped announcing themselves"
        return "; ".join(sorted(set(self.failures.values())))


def parse_version(version: str) -> int:
    """A request's version string as Triton reads it (its wording kept: clients match on it)."""
    try:
        wanted = int(version)
    except ValueError:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{version}' (details: stol), "
            "version should be an integral value > 0"
        ) from None
    if wanted <= 0:
        raise InvalidArgument(
            f"invalid model version specified '{version}' , version should be an integral value > 0"
        )
    return wanted


@dataclass(slots=True)
class _Declared:
    """A model directory in the repository (even one that cannot load)."""

    name: str
    versions: tuple[int, ...]
    error: str


class ModelTable:
    def __init__(self, stale_after_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._views: dict[tuple[str, int], ModelView] = {}
        self._declared: dict[str, _Declared] = {}
        self._records: dict[tuple[str, int], ModelStateRecord] = {}
        """Declared states from the JetStream KV bucket (meshserve.model_states); version 0 = the model."""
        self._signature_checks: dict[
            tuple[str, int], tuple[tuple[mc.ModelConfig, ...], frozenset[str], str]
        ] = {}
        """Ensemble → (the configs checked, the problem found): re-checked when any config changes."""

    # -- feeding --------------------------------------------------------------------------------
    def load_repository(self, repository: Path) -> None:
        for entry in scan_repository(repository):
            self._declared[entry.name] = _Declared(entry.name, entry.versions, entry.error)
            if entry.config is not None:
                for version in entry.versions:
                    self._views.setdefault(
                        (entry.name, version), ModelView.from_config(entry.name, version, entry.config)
                    )

    def apply(self, ann: mesh_pb2.WorkerAnnouncement) -> None:
        key = (ann.model_name, ann.model_version)
        from_controller = ann.instance_id.startswith(CONTROLLER_ID_PREFIX)
        if from_controller and ann.reason == REMOVED_REASON:
            self._forget(ann.model_name, ann.model_version)
            return
        view = self._views.get(key)
        # a new config arrives with a newly READY instance (a reload): it wins over the old one, whose
        # instances are already known and leave soon
        fresh_ready = (
            ann.state == mesh_pb2.READY and view is not None and ann.instance_id not in view.instances
        )
        if ann.model_config and (view is None or not view.instances or fresh_ready):
            config = config_from_bytes(ann.model_config)
            fresh = ModelView.from_config(ann.model_name, ann.model_version, config)
            if view is not None:
                fresh.instances, fresh.failures = view.instances, view.failures
            view = self._views[key] = fresh
        if view is None:
            declared = self._declared.get(ann.model_name)
            if ann.state == mesh_pb2.UNAVAILABLE and declared is not None:
                declared.error = ann.reason or declared.error
            elif (
                ann.state == mesh_pb2.UNAVAILABLE and from_controller
            ):  # appeared since this gateway read the repository
                self._declared[ann.model_name] = _Declared(ann.model_name, (), ann.reason or "failed to load")
            return
        if ann.state == mesh_pb2.READY:
            view.instances[ann.instance_id] = time.monotonic()
            view.failures.pop(ann.instance_id, None)
        elif ann.state == mesh_pb2.UNAVAILABLE:
            view.instances.pop(ann.instance_id, None)
            view.failures[ann.instance_id] = ann.reason or "failed to load"
        else:
            view.instances.pop(ann.instance_id, None)
            view.failures.pop(ann.instance_id, None)
        self._forget_long_gone(view)

    def apply_record(self, record: ModelStateRecord) -> None:
        self._records[(record.model, record.version)] = record

    def drop_record(self, name: str, version: int) -> None:
        self._records.pop((name, version), None)

    def _forget(self, name: str, version: int) -> None:
        """A model (version 0) or one version of it left the repository: drop what is known of it."""
        for key in [k for k in self._views if k[0] == name and version in (0, k[1])]:
            del self._views[key]
        if version == 0 or not any(n == name for n, _ in self._views):
            self._declared.pop(name, None)

    def _forget_long_gone(self, view: ModelView) -> None:
        """Workers restart with new ids: drop instances silent for 10x the stale time (one stays,
        so a model whose workers all died still reads UNAVAILABLE with its reason)."""
        cutoff = time.monotonic() - 10 * self._stale_after_s
        gone = [iid for iid, seen in view.instances.items() if seen < cutoff]
        if len(gone) == len(view.instances):
            gone = gone[:-1]  # keep one: the model must not look as if it never had a worker
        for iid in gone:
            view.instances.pop(iid, None)

    # -- reading ----------------------------------------------------------------------------------
    def state(self, view: ModelView) -> ModelState:
        if view.ensemble is not None:
            state, view.derived_reason = self._ensemble_state(view, view.ensemble, 0)
            return state
        return view.state(time.monotonic(), self._stale_after_s)

    def _ensemble_state(self, view: ModelView, plan: EnsemblePlan, depth: int) -> tuple[ModelState, str]:
        """READY when every step model is READY and their configs fit the pipeline; UNAVAILABLE with
        the first step at fault; LOADING while a step model is."""
        if view.failures and not view.instances:  # e.g. the controller's "unloaded"
            return ModelState.UNAVAILABLE, "; ".join(sorted(set(view.failures.values())))
        declared = self._declared.get(view.name)
        if declared is not None and declared.error:
            return ModelState.UNAVAILABLE, declared.error
        if depth > 16:
            return ModelState.UNAVAILABLE, f"ensemble '{view.name}': ensembles nested too deeply"
        configs: dict[str, mc.ModelConfig] = {}
        decoupled: set[str] = set()
        loading = ""
        for step in plan.steps:
            try:
                step_view = self.find(step.model, str(step.version) if step.version > 0 else "")
            except MeshError as exc:
                return ModelState.UNAVAILABLE, f"{step.label}: {exc}"
            if step_view.ensemble is not None:
                state, reason = self._ensemble_state(step_view, step_view.ensemble, depth + 1)
            else:
                state, reason = step_view.state(time.monotonic(), self._stale_after_s), step_view.reason()
            if state is ModelState.UNAVAILABLE:
                return ModelState.UNAVAILABLE, f"{step.label} is not available: {reason}"
            if state is ModelState.LOADING:
                loading = loading or f"{step.label} is loading"
            configs[step.model] = step_view.config
            if step_view.decoupled:
                decoupled.add(step.model)
        view.derived_decoupled = bool(decoupled)
        if loading:
            return ModelState.LOADING, loading
        key = (view.name, view.version)
        checked = (view.config, *configs.values())
        cached = self._signature_checks.get(key)
        if (
            cached is None
            or len(cached[0]) != len(checked)
            or any(a is not b for a, b in zip(cached[0], checked, strict=True))
            or cached[1] != decoupled
        ):
            cached = self._signature_checks[key] = (
                checked,
                frozenset(decoupled),
                check_signatures(view.config, configs, frozenset(decoupled)),
            )
        if cached[2]:
            return ModelState.UNAVAILABLE, cached[2]
        return ModelState.READY, ""

    def live_instances(self) -> list[tuple[str, int, int]]:
        """(model, version, READY instances heard from recently) for every known model version."""
        now = time.monotonic()
        return [(v.name, v.version, v.live_instances(now, self._stale_after_s)) for v in self.all_views()]

    def versions_of(self, name: str) -> list[ModelView]:
        return sorted((v for (n, _), v in self._views.items() if n == name), key=lambda v: v.version)

    def names(self) -> list[str]:
        return sorted({n for n, _ in self._views} | set(self._declared) | {n for n, _ in self._records})

    def index_rows(self, ready_only: bool) -> list[dict[str, str]]:
        """RepositoryIndex: every model version known from announcements, the KV bucket or the repository."""
        rows: list[dict[str, str]] = []
        listed: set[str] = set()
        now = time.monotonic()
        for view in self.all_views():
            listed.add(view.name)
            live = view.live_instances(now, self._stale_after_s) > 0
            own = self.state(view)
            record = self._records.get((view.name, view.version))
            state, reason = combined_state(live, own.value, record)
            if reason is None:
                reason = "" if state == ModelState.READY.value else view.reason()
            rows.append({"name": view.name, "version": str(view.version), "state": state, "reason": reason})
        for (name, version), record in sorted(self._records.items()):
            if (name, version) in self._views or (version == 0 and name in listed):
                continue
            listed.add(name)
            rows.append(
                {
                    "name": name,
                    "version": str(version) if version else "",
                    "state": record.state,
                    "reason": record.reason,
                }
            )
        for name in sorted(set(self._declared) - listed):
            rows.append(
                {"name": name, "version": "", "state": "UNAVAILABLE", "reason": self.declared_error(name)}
            )
        return [r for r in rows if not ready_only or r["state"] == ModelState.READY.value]

    def find(self, name: str, version: str = "") -> ModelView:
        """The view a request names; the highest READY version when ``version`` is empty."""
        if version:
            parse_version(version)
        views = self.versions_of(name)
        if not views:
            error = self.declared_error(name)
            if error:
                raise ModelNotReady(
                    f"Request for unknown model: '{name}' has no available versions ({error})"
                )
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        if version:
            wanted = parse_version(version)
            for view in views:
                if view.version == wanted:
                    return view
            raise ModelNotFound(f"Request for unknown model: '{name}' version {version} is not found")
        ready = [v for v in views if self._plain_state(v) is ModelState.READY]
        return ready[-1] if ready else views[-1]

    def _plain_state(self, view: ModelView) -> ModelState:
        """State without re-checking an ensemble's steps (find() runs inside those checks)."""
        if view.ensemble is not None:
            return ModelState.READY
        return view.state(time.monotonic(), self._stale_after_s)

    def ready_view(self, name: str, version: str = "") -> ModelView:
        """Like :meth:`find`, but the version must be READY to take inference."""
        view = self.find(name, version)
        state = self.state(view)
        if state is ModelState.READY:
            return view
        if state is ModelState.UNAVAILABLE:
            raise ModelNotReady(
                f"Request for unknown model: '{name}' has no available versions ({view.reason()})"
            )
        raise ModelNotReady(
            f"Request for model '{name}' version {view.version}: the model is not ready yet (loading)"
        )

    def all_views(self) -> list[ModelView]:
        return sorted(self._views.values(), key=lambda v: (v.name, v.version))

    def declared_error(self, name: str) -> str:
        declared = self._declared.get(name)
        if declared is not None and declared.error:
            return declared.error
        reasons = sorted(
            {
                r.reason
                for (n, _), r in self._records.items()
                if n == name and r.state == "UNAVAILABLE" and r.reason
            }
        )
        return "; ".join(reasons)

    def _unloaded(self, view: ModelView) -> bool:
        """Unloaded on purpose, by the announcements' markers or the KV bucket."""
        record = self._records.get((view.name, view.version))
        if record is not None and record.state == "UNAVAILABLE" and record.reason == UNLOADED_REASON:
            return not view.live_instances(time.monotonic(), self._stale_after_s)
        return view.unloaded

    def server_ready(self, strict: bool) -> bool:
        """Strict: every model declared or seen is READY.  Otherwise: none is still LOADING."""
        if strict and any(d.error for d in self._declared.values()):
            return False
        states = [self.state(v) for v in self._views.values() if not self._unloaded(v)]
        if strict:
            return all(s is ModelState.READY for s in states)
        return all(s is not ModelState.LOADING for s in states)
