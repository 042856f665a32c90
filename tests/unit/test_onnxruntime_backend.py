"""The onnxruntime backend and config auto-complete, on tiny ONNX graphs built here with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.models import ModelTable
from meshserve.errors import Internal, InvalidArgument
from meshserve.model_config import (
    CONFIG_FILENAME,
    ConfigError,
    complete_config,
    config_to_json,
    load_config,
    needs_auto_complete,
    parse_config,
)
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import scan_repository
from workers.backends import create_backend
from workers.backends.base import ConfigCompleter, LoadContext, Request
from workers.backends.onnxruntime_backend import OnnxRuntimeBackend, providers_for, session_options
from workers.backends.onnxruntime_config import (
    DEFAULT_MAX_BATCH_SIZE,
    GraphTensor,
    check_against_graph,
    complete_from_graph,
)

RNG = np.random.default_rng(7)

# --------------------------------------------------------------------------------------------------
# Helpers: graphs, model directories, contexts
# --------------------------------------------------------------------------------------------------


def value(name: str, shape: list[int | str | None], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def add_sub_graph(first: int | str = "batch") -> onnx.GraphProto:
    return helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [value("INPUT0", [first, 4]), value("INPUT1", [first, 4])],
        [value("OUTPUT0", [first, 4]), value("OUTPUT1", [first, 4])],
    )


def model_dir(tmp_path: Path, graph: onnx.GraphProto, config: str | None = None, name: str = "m") -> Path:
    directory = tmp_path / name
    save(graph, directory / "1" / "model.onnx")
    if config is not None:
        (directory / CONFIG_FILENAME).write_text(config)
    return directory


def context(directory: Path, device: str = "cpu") -> LoadContext:
    config = load_config(directory)
    return LoadContext(
        directory.name, 1, directory, config, config_to_json(config), f"{directory.name}_0", device
    )


def loaded(directory: Path) -> tuple[OnnxRuntimeBackend, LoadContext]:
    """What the worker does: auto-complete (when needed), re-check, load."""
    ctx = context(directory)
    backend = OnnxRuntimeBackend()
    backend.auto_complete_config(ctx)
    complete_config(ctx.config, directory.name)
    backend.load(ctx)
    return backend, ctx


def fp32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def tensor(name: str, data_type: str, dims: tuple[int, ...]) -> GraphTensor:
    return GraphTensor(name, data_type, dims)


def bare(text: str = "") -> mc.ModelConfig:
    config = parse_config('name: "m" backend: "onnxruntime" ' + text)
    return config


ADD_SUB_CONFIG = """
name: "m"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
"""

BATCHABLE_IN = [tensor("x", "TYPE_FP32", (-1, 16))]
BATCHABLE_OUT = [tensor("y", "TYPE_FP32", (-1, 8))]

# --------------------------------------------------------------------------------------------------
# Auto-complete rules (pure)
# --------------------------------------------------------------------------------------------------


def test_batchable_graph_gets_default_max_batch_size_stripped_dims_and_dynamic_batching() -> None:
    config = bare()
    assert complete_from_graph(config, BATCHABLE_IN, BATCHABLE_OUT)
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE == 4
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("x", "TYPE_FP32", [16])
    ]
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [8])]
    assert config.HasField("dynamic_batching")


def test_configured_max_batch_size_is_kept() -> None:
    config = bare("max_batch_size: 32")
    complete_from_graph(config, BATCHABLE_IN, BATCHABLE_OUT)
    assert config.max_batch_size == 32
    assert config.HasField("dynamic_batching")


def test_max_batch_size_one_gets_no_dynamic_batching() -> None:
    """Triton turns dynamic batching on only when max_batch_size > 1."""
    config = bare("max_batch_size: 1")
    complete_from_graph(config, BATCHABLE_IN, BATCHABLE_OUT)
    assert config.max_batch_size == 1
    assert config.WhichOneof("scheduling_choice") is None


def test_a_scheduler_in_the_config_is_left_alone() -> None:
    config = bare("sequence_batching { }")
    complete_from_graph(config, BATCHABLE_IN, BATCHABLE_OUT)
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    config = bare("dynamic_batching { max_queue_delay_microseconds: 100 }")
    complete_from_graph(config, BATCHABLE_IN, BATCHABLE_OUT)
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_graph_with_a_fixed_first_dim_does_not_batch() -> None:
    config = bare()
    complete_from_graph(config, [tensor("x", "TYPE_INT64", (3, 16))], BATCHABLE_OUT)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [3, 16]
    assert list(config.output[0].dims) == [-1, 8]  # the variable first dim stays: nothing batches
    assert config.WhichOneof("scheduling_choice") is None


def test_non_batching_graph_with_max_batch_size_is_an_error() -> None:
    config = bare("max_batch_size: 8")
    with pytest.raises(ConfigError, match="model does not support batching while non-zero max_batch_size"):
        complete_from_graph(config, [tensor("x", "TYPE_FP32", (3,))], BATCHABLE_OUT)


def test_config_with_inputs_and_outputs_is_not_touched() -> None:
    config = parse_config(ADD_SUB_CONFIG)
    before = config.SerializeToString()
    assert not complete_from_graph(config, BATCHABLE_IN, BATCHABLE_OUT)
    assert config.SerializeToString() == before
    assert not needs_auto_complete(config)


def test_only_the_missing_list_is_filled() -> None:
    config = bare('input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]')
    complete_from_graph(config, [tensor("other", "TYPE_FP32", (-1, 2))], BATCHABLE_OUT)
    assert [t.name for t in config.input] == ["x"]  # kept as configured
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [8])]


def test_scalar_per_row_becomes_dims_one_with_empty_reshape() -> None:
    config = bare()
    complete_from_graph(config, [tensor("x", "TYPE_FP32", (-1,))], [tensor("y", "TYPE_FP32", (-1,))])
    for io in (config.input[0], config.output[0]):
        assert list(io.dims) == [1]
        assert io.HasField("reshape") and list(io.reshape.shape) == []


# --------------------------------------------------------------------------------------------------
# The config checked against the graph at load
# --------------------------------------------------------------------------------------------------

GRAPH_IN = [tensor("INPUT0", "TYPE_FP32", (-1, 4)), tensor("INPUT1", "TYPE_FP32", (-1, 4))]
GRAPH_OUT = [tensor("OUTPUT0", "TYPE_FP32", (-1, 4)), tensor("OUTPUT1", "TYPE_FP32", (-1, 4))]


def test_matching_config_passes() -> None:
    check_against_graph(parse_config(ADD_SUB_CONFIG), GRAPH_IN, GRAPH_OUT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name: "INPUT0"', 'name: "INPUT9"'), "input 'INPUT9' is not an input of the model"),
        (('name: "OUTPUT1"', 'name: "OUTPUT9"'), "output 'OUTPUT9' is not an output of the model"),
        (("TYPE_FP32 dims: [ 4 ] },\n  { name: \"INPUT1\"", "TYPE_INT32 dims: [ 4 ] },\n  { name: \"INPUT1\""),
         "the config says TYPE_INT32, the model has TYPE_FP32"),
        (("dims: [ 4 ] },\n  { name: \"INPUT1\"", "dims: [ 5 ] },\n  { name: \"INPUT1\""),
         "the config's dims [5] do not match the model's shape [-1, 4]"),
    ],
)  # fmt: skip
def test_contradicting_config_is_refused(change: tuple[str, str], message: str) -> None:
    config = parse_config(ADD_SUB_CONFIG.replace(*change, 1))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_against_graph(config, GRAPH_IN, GRAPH_OUT)


def test_a_graph_input_left_out_of_the_config_is_refused() -> None:
    config = parse_config(ADD_SUB_CONFIG)
    del config.input[1]
    with pytest.raises(ConfigError, match=r"input\(s\) \['INPUT1'\] are missing from the config"):
        check_against_graph(config, GRAPH_IN, GRAPH_OUT)


def test_batching_needs_a_variable_first_dim() -> None:
    fixed = [tensor(t.name, t.data_type, (2, 4)) for t in GRAPH_IN]
    with pytest.raises(ConfigError, match="max_batch_size > 0 needs a variable first dimension"):
        check_against_graph(parse_config(ADD_SUB_CONFIG), fixed, GRAPH_OUT)


def test_variable_model_dims_accept_any_config_dim() -> None:
    config = parse_config(ADD_SUB_CONFIG)
    variable_in = [tensor(t.name, t.data_type, (-1, -1)) for t in GRAPH_IN]
    check_against_graph(config, variable_in, GRAPH_OUT)


# --------------------------------------------------------------------------------------------------
# The backend on real sessions
# --------------------------------------------------------------------------------------------------


def test_registered_under_onnxruntime_and_completes_configs() -> None:
    backend = create_backend("onnxruntime")
    assert isinstance(backend, OnnxRuntimeBackend)
    assert isinstance(backend, ConfigCompleter)


def test_add_sub_batch_runs_as_one_call_and_splits_by_rows(tmp_path: Path) -> None:
    backend, _ = loaded(model_dir(tmp_path, add_sub_graph(), ADD_SUB_CONFIG))
    calls: list[dict[str, np.ndarray]] = []
    backend._session = _Spy(backend._session, calls)
    a, b, c, d = fp32(1, 4), fp32(1, 4), fp32(3, 4), fp32(3, 4)
    a.flags.writeable = False  # wire views are read-only
    results = backend.execute(
        [
            Request("r1", {"INPUT0": a, "INPUT1": b}, batch_size=1),
            Request("r2", {"INPUT0": c, "INPUT1": d}, requested_outputs=["OUTPUT1"], batch_size=3),
        ]
    )
    assert len(calls) == 1 and calls[0]["INPUT0"].shape == (4, 4)
    assert results[0].error is None and results[1].error is None
    np.testing.assert_allclose(results[0].outputs["OUTPUT0"], a + b, rtol=1e-6)
    np.testing.assert_allclose(results[0].outputs["OUTPUT1"], a - b, rtol=1e-6)
    assert list(results[1].outputs) == ["OUTPUT1"]
    np.testing.assert_allclose(results[1].outputs["OUTPUT1"], c - d, rtol=1e-6)


class _Spy:
    """Wraps a session and records each run's feed."""

    def __init__(self, session: object, calls: list[dict[str, np.ndarray]]) -> None:
        self._session, self._calls = session, calls

    def run(self, names: list[str], feed: dict[str, np.ndarray], options: object) -> object:
        self._calls.append(feed)
        return self._session.run(names, feed, options)  # type: ignore[attr-defined]


def test_auto_completed_dense_model_matches_numpy(tmp_path: Path) -> None:
    weight, bias = fp32(16, 8), fp32(8)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xW"]),
            helper.make_node("Add", ["xW", "b"], ["xWb"]),
            helper.make_node("Relu", ["xWb"], ["y"]),
        ],
        "dense",
        [value("x", ["n", 16])],
        [value("y", ["n", 8])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    directory = model_dir(tmp_path, graph)  # no config.pbtxt
    entry = scan_repository(tmp_path)[0]
    assert (entry.name, entry.error, entry.auto_complete, entry.versions) == ("m", "", True, (1,))
    assert (entry.config.backend, entry.config.platform) == ("onnxruntime", "onnxruntime_onnx")
    backend, ctx = loaded(directory)
    assert ctx.config.max_batch_size == 4 and ctx.config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in ctx.config.input] == [("x", [16])]
    assert [(t.name, list(t.dims)) for t in ctx.config.output] == [("y", [8])]
    x = fp32(2, 16)
    [result] = backend.execute([Request("r", {"x": x}, batch_size=2)])
    np.testing.assert_allclose(result.outputs["y"], np.maximum(x @ weight + bias, 0), rtol=1e-5, atol=1e-6)


def test_non_batching_model_runs_each_request_alone(tmp_path: Path) -> None:
    backend, ctx = loaded(model_dir(tmp_path, add_sub_graph(first=2)))
    assert ctx.config.max_batch_size == 0
    assert list(ctx.config.input[0].dims) == [2, 4]
    a, b = fp32(2, 4), fp32(2, 4)
    results = backend.execute(
        [Request("r1", {"INPUT0": a, "INPUT1": b}), Request("r2", {"INPUT0": b, "INPUT1": a})]
    )
    np.testing.assert_allclose(results[0].outputs["OUTPUT0"], a + b, rtol=1e-6)
    np.testing.assert_allclose(results[1].outputs["OUTPUT1"], b - a, rtol=1e-6)


def test_scalar_per_row_is_reshaped_in_and_out(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])], "neg", [value("x", ["n"])], [value("y", ["n"])]
    )
    backend, ctx = loaded(model_dir(tmp_path, graph))
    assert list(ctx.config.input[0].dims) == [1] and ctx.config.input[0].HasField("reshape")
    x1, x2 = fp32(2, 1), fp32(1, 1)
    results = backend.execute([Request("a", {"x": x1}, batch_size=2), Request("b", {"x": x2}, batch_size=1)])
    assert results[0].outputs["y"].shape == (2, 1)
    np.testing.assert_allclose(results[0].outputs["y"], -x1)
    np.testing.assert_allclose(results[1].outputs["y"], -x2)


def test_string_tensors_are_refused_at_load(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [value("s", ["n"], TensorProto.STRING)],
        [value("t", ["n"], TensorProto.STRING)],
    )
    directory = model_dir(tmp_path, graph)
    with pytest.raises(
        InvalidArgument, match=r"input 's': the onnxruntime backend has no BYTES \(ONNX string\)"
    ):
        loaded(directory)


def test_execute_error_becomes_internal_with_the_cause(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [value("x", ["n"])],
        [value("y", [2, 2])],
        initializer=[numpy_helper.from_array(np.array([2, 2], np.int64), "shape")],
    )
    config = """
    name: "m" backend: "onnxruntime"
    input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]
    """
    backend, _ = loaded(model_dir(tmp_path, graph, config))
    x = np.arange(4, dtype=np.float32)
    [bad, good] = backend.execute([Request("bad", {"x": fp32(3)}), Request("good", {"x": x})])
    assert isinstance(bad.error, Internal)
    assert "onnxruntime model failed" in str(bad.error)
    assert good.error is None
    np.testing.assert_array_equal(good.outputs["y"], x.reshape(2, 2))


def test_contradicting_config_fails_the_load(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, add_sub_graph(), ADD_SUB_CONFIG.replace("TYPE_FP32", "TYPE_INT32"))
    with pytest.raises(ConfigError, match="the config says TYPE_INT32, the model has TYPE_FP32"):
        loaded(directory)


def test_missing_or_broken_model_file(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, add_sub_graph(), ADD_SUB_CONFIG)
    (directory / "1" / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(InvalidArgument, match="onnxruntime cannot load"):
        loaded(directory)
    (directory / "1" / "model.onnx").unlink()
    with pytest.raises(InvalidArgument, match=r"model file .* not found"):
        loaded(directory)


def test_session_options_from_parameters() -> None:
    config = parse_config(
        """
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "3" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "enable_mem_arena" value: { string_value: "0" } }
        parameters { key: "enable_mem_pattern" value: { string_value: "false" } }
        optimization { graph { level: 2 } }
        """
    )
    import onnxruntime as ort

    options, _ = session_options(config)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    defaults, _ = session_options(mc.ModelConfig())
    assert defaults.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert defaults.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("execution_mode", "2", "must be 0 (sequential) or 1 (parallel)"),
        ("intra_op_thread_count", "many", "must be an integer"),
        ("enable_mem_arena", "maybe", "must be true/false"),
    ],
)
def test_bad_parameters_are_clear_errors(key: str, raw: str, message: str) -> None:
    config = parse_config(f'parameters {{ key: "{key}" value: {{ string_value: "{raw}" }} }}')
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        session_options(config)


def test_providers() -> None:
    import onnxruntime as ort

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    cuda = providers_for("cuda:1")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert cuda == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    else:
        assert cuda == ["CPUExecutionProvider"]


# --------------------------------------------------------------------------------------------------
# Repository and gateway view of a config-less model
# --------------------------------------------------------------------------------------------------


def test_directory_without_config_or_onnx_file_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.pt").write_bytes(b"")
    [entry] = scan_repository(tmp_path)
    assert entry.config is None
    assert "missing" in entry.error and "model.onnx" in entry.error


def test_partial_config_is_flagged_for_completion(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, add_sub_graph(), 'platform: "onnxruntime_onnx" max_batch_size: 2')
    [entry] = scan_repository(tmp_path)
    assert entry.auto_complete and entry.config is not None and entry.config.max_batch_size == 2
    _, ctx = loaded(directory)
    assert ctx.config.max_batch_size == 2 and len(ctx.config.input) == 2


def test_gateway_view_takes_the_announced_completed_config(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, add_sub_graph())
    models = ModelTable(stale_after_s=5.0)
    models.load_repository(tmp_path)
    view = models.find("m", "1")
    assert view.inputs == {} and view.max_batch_size == 0  # the minimal config, until a worker speaks
    _, ctx = loaded(directory)
    for state in (mesh_pb2.LOADING, mesh_pb2.READY):
        models.apply(
            mesh_pb2.WorkerAnnouncement(
                instance_id="w0",
                model_name="m",
                model_version=1,
                state=state,
                model_config=ctx.config.SerializeToString(),
            )
        )
    view = models.ready_view("m")
    assert view.max_batch_size == 4
    assert {name: (s.datatype, s.dims) for name, s in view.inputs.items()} == {
        "INPUT0": ("FP32", (4,)),
        "INPUT1": ("FP32", (4,)),
    }
    assert set(view.outputs) == {"OUTPUT0", "OUTPUT1"}
    assert view.config.HasField("dynamic_batching")


def test_meshserve_up_plans_workers_for_a_config_less_model(tmp_path: Path) -> None:
    from meshserve.launcher import worker_plan

    model_dir(tmp_path, add_sub_graph())
    [spec] = worker_plan(scan_repository(tmp_path), gpus=0)
    assert (spec.model, spec.version, spec.device) == ("m", 1, "cpu")
