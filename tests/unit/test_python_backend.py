"""The python backend and its ``triton_python_backend_utils`` stand-in, with model.py files written here."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from meshserve.errors import Internal, InvalidArgument, ModelNotFound, Unavailable
from meshserve.model_config import complete_config, config_to_json, parse_config
from workers.backends import pb_utils
from workers.backends.base import LoadContext, Request
from workers.backends.python_backend import PythonBackend, create

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

ADD_SUB_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [
  {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }}
]
"""

# Triton's "simple"/add_sub example shape: dtypes come from the config in initialize().
ADD_SUB_MODEL = """
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            out_0 = in_0.as_numpy() + in_1.as_numpy()
            out_1 = in_0.as_numpy() - in_1.as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", out_0.astype(self.output0_dtype)),
                pb_utils.Tensor("OUTPUT1", out_1.astype(self.output1_dtype)),
            ]))
        return responses

    def finalize(self):
        pass
"""

ONE_IN_ONE_OUT_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "IN" data_type: {dtype} dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: {dtype} dims: [ -1 ] }} ]
"""


def make_ctx(
    tmp_path: Path,
    source: str,
    config_text: str,
    *,
    name: str = "m",
    version: int = 1,
    files: dict[str, str] | None = None,
    device: str = "cpu",
) -> LoadContext:
    model_dir = tmp_path / "repo" / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    for filename, text in (files or {}).items():
        (version_dir / filename).write_text(textwrap.dedent(text))
    config = parse_config(config_text.format(name=name))
    complete_config(config, name)
    (model_dir / "config.pbtxt").write_text(config_text.format(name=name))
    return LoadContext(
        model_name=name,
        model_version=version,
        model_dir=model_dir,
        config=config,
        config_json=config_to_json(config),
        instance_name=f"{name}_0",
        device=device,
    )


def load(tmp_path: Path, source: str, config_text: str, **kwargs: object) -> PythonBackend:
    backend = create()
    backend.load(make_ctx(tmp_path, source, config_text, **kwargs))  # type: ignore[arg-type]
    return backend


def int_request(request_id: str, a: np.ndarray, b: np.ndarray, outputs: list[str] | None = None) -> Request:
    return Request(request_id=request_id, inputs={"INPUT0": a, "INPUT1": b}, requested_outputs=outputs or [])


def bytes_array(*items: bytes) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


# --------------------------------------------------------------------------------------------------
# add_sub: the canonical Triton model
# --------------------------------------------------------------------------------------------------


def test_add_sub_batch_of_two_requests(tmp_path: Path) -> None:
    backend = load(tmp_path, ADD_SUB_MODEL, ADD_SUB_CONFIG)
    a = np.arange(16, dtype=np.int32)
    b = np.full(16, 3, dtype=np.int32)
    results = backend.execute([int_request("r1", a, b), int_request("r2", b, a)])

    assert len(results) == 2
    assert all(r.error is None for r in results)
    assert sorted(results[0].outputs) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(results[0].outputs["OUTPUT0"], a + 3)
    np.testing.assert_array_equal(results[0].outputs["OUTPUT1"], a - 3)
    np.testing.assert_array_equal(results[1].outputs["OUTPUT1"], 3 - a)
    assert results[0].outputs["OUTPUT0"].dtype == np.int32
    backend.unload()


def test_only_requested_outputs_are_returned(tmp_path: Path) -> None:
    backend = load(tmp_path, ADD_SUB_MODEL, ADD_SUB_CONFIG)
    a = np.ones(16, dtype=np.int32)
    [result] = backend.execute([int_request("r", a, a, outputs=["OUTPUT1"])])
    assert result.error is None
    assert list(result.outputs) == ["OUTPUT1"]
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], np.zeros(16, dtype=np.int32))


def test_read_only_inputs_reach_the_model_writable(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                arr = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                arr *= 2  # in place, as Triton models may do
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", arr)]))
            return responses
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_FP32"))
    wire = np.array([1.5, 2.0, -1.0], dtype=np.float32).tobytes()
    view = np.frombuffer(wire, dtype=np.float32)  # read-only, like the worker's decoded inputs
    assert not view.flags.writeable
    [result] = backend.execute([Request(request_id="r", inputs={"IN": view})])
    assert result.error is None
    np.testing.assert_array_equal(result.outputs["OUT"], np.array([3.0, 4.0, -2.0], dtype=np.float32))
    np.testing.assert_array_equal(view, np.array([1.5, 2.0, -1.0], dtype=np.float32))  # wire untouched


# --------------------------------------------------------------------------------------------------
# What the model sees: initialize args and request accessors
# --------------------------------------------------------------------------------------------------

INTROSPECT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "IN" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [
  {{ name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "REQ" data_type: TYPE_STRING dims: [ 1 ] }}
]
parameters {{ key: "custom_key" value {{ string_value: "custom_value" }} }}
"""

INTROSPECT_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.args = dict(args)

    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {
                "request_id": request.request_id(),
                "correlation_id": request.correlation_id(),
                "flags": request.flags(),
                "timeout": request.timeout(),
                "parameters": json.loads(request.parameters()),
                "requested": request.requested_output_names(),
                "cancelled": request.is_cancelled(),
                "inputs": [t.name() for t in request.inputs()],
                "in_shape": pb_utils.get_input_tensor_by_name(request, "IN").shape(),
                "in_dtype": pb_utils.get_input_tensor_by_name(request, "IN").triton_dtype(),
                "is_cpu": pb_utils.get_input_tensor_by_name(request, "IN").is_cpu(),
            }
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("ARGS", np.array([json.dumps(self.args).encode()], dtype=np.object_)),
                pb_utils.Tensor("REQ", np.array([json.dumps(seen).encode()], dtype=np.object_)),
            ], parameters={"answered_by": "introspect", "n": 1}))
        return responses
"""


def test_initialize_args_follow_triton(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, INTROSPECT_MODEL, INTROSPECT_CONFIG, name="intro", version=3, device="cuda:1")
    backend = create()
    backend.load(ctx)
    [result] = backend.execute([Request(request_id="x", inputs={"IN": np.array([[7]], dtype=np.int64)})])
    assert result.error is None
    args = json.loads(result.outputs["ARGS"][0])
    assert set(args) == {
        "model_config",
        "model_instance_kind",
        "model_instance_name",
        "model_instance_device_id",
        "model_repository",
        "model_version",
        "model_name",
    }
    assert all(isinstance(v, str) for v in args.values())
    assert args["model_instance_kind"] == "GPU"
    assert args["model_instance_device_id"] == "1"
    assert args["model_instance_name"] == "intro_0"
    assert args["model_repository"] == str(tmp_path / "repo" / "intro")
    assert args["model_version"] == "3"
    assert args["model_name"] == "intro"
    model_config = json.loads(args["model_config"])
    assert model_config["max_batch_size"] == 4
    assert model_config["parameters"] == {"custom_key": {"string_value": "custom_value"}}
    assert [o["name"] for o in model_config["output"]] == ["ARGS", "REQ"]
    assert model_config["input"][0]["data_type"] == "TYPE_INT64"


def test_cpu_instance_kind(tmp_path: Path) -> None:
    backend = load(tmp_path, INTROSPECT_MODEL, INTROSPECT_CONFIG)
    [result] = backend.execute([Request(request_id="", inputs={"IN": np.array([[1]], dtype=np.int64)})])
    args = json.loads(result.outputs["ARGS"][0])
    assert (args["model_instance_kind"], args["model_instance_device_id"]) == ("CPU", "0")


def test_request_accessors(tmp_path: Path) -> None:
    backend = load(tmp_path, INTROSPECT_MODEL, INTROSPECT_CONFIG)
    plain = Request(request_id="req-1", inputs={"IN": np.array([[1], [2]], dtype=np.int64)}, batch_size=2)
    with_params = Request(
        request_id="req-2",
        inputs={"IN": np.array([[5]], dtype=np.int64)},
        requested_outputs=["REQ"],
        parameters={
            "temperature": 0.5,
            "mode": "fast",
            "sequence_id": 42,
            "sequence_start": True,
            "timeout": 1500,
        },
    )
    first, second = backend.execute([plain, with_params])
    assert first.error is None and second.error is None

    seen1 = json.loads(first.outputs["REQ"][0])
    assert seen1 == {
        "request_id": "req-1",
        "correlation_id": 0,
        "flags": 0,
        "timeout": 0,
        "parameters": {},
        "requested": ["ARGS", "REQ"],  # none asked for: every configured output, as Triton does
        "cancelled": False,
        "inputs": ["IN"],
        "in_shape": [2, 1],
        "in_dtype": 9,  # TRITONSERVER_TYPE_INT64
        "is_cpu": True,
    }
    assert first.parameters == {"answered_by": "introspect", "n": 1}

    assert list(second.outputs) == ["REQ"]  # ARGS was produced but not asked for
    seen2 = json.loads(second.outputs["REQ"][0])
    assert seen2["request_id"] == "req-2"
    assert seen2["requested"] == ["REQ"]
    assert seen2["parameters"] == {"temperature": 0.5, "mode": "fast"}
    assert seen2["correlation_id"] == 42
    assert seen2["flags"] == pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
    assert seen2["timeout"] == 1500


# --------------------------------------------------------------------------------------------------
# BYTES
# --------------------------------------------------------------------------------------------------

BYTES_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            words = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            upper = np.array([w.upper() for w in words.reshape(-1)], dtype=np.object_).reshape(words.shape)
            lengths = np.array([str(len(w)) for w in words.reshape(-1)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", upper),
                pb_utils.Tensor("LEN", lengths),
                pb_utils.Tensor("FIXED", np.array([b"ab", b"c"], dtype=np.bytes_)),
            ]))
        return responses
"""

BYTES_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "IN" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [
  {{ name: "OUT" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "LEN" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "FIXED" data_type: TYPE_STRING dims: [ -1 ] }}
]
"""


def test_bytes_model(tmp_path: Path) -> None:
    backend = load(tmp_path, BYTES_MODEL, BYTES_CONFIG)
    words = bytes_array(b"hello", b"", b"w\x00rld")
    [result] = backend.execute([Request(request_id="r", inputs={"IN": words})])
    assert result.error is None
    out = result.outputs["OUT"]
    assert out.dtype == np.object_
    assert out.shape == (3,)
    assert list(out) == [b"HELLO", b"", b"W\x00RLD"]
    assert list(result.outputs["LEN"]) == ["5", "0", "5"]  # str elements pass through for the codec
    fixed = result.outputs["FIXED"]
    assert fixed.dtype == np.object_  # np.bytes_ arrays become object arrays of bytes
    assert list(fixed) == [b"ab", b"c"]


# --------------------------------------------------------------------------------------------------
# Errors from the model
# --------------------------------------------------------------------------------------------------

PER_REQUEST_ERROR_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            if value < 0:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"negative input {value}", pb_utils.TritonError.INVALID_ARG)))
            elif value == 0:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("nothing at zero", pb_utils.TritonError.NOT_FOUND)))
            elif value == 1:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUT", np.array([1], np.int32))],
                    error=pb_utils.TritonError("default code")))
            else:
                out = pb_utils.Tensor("OUT", np.array([value * 10], np.int32))
                responses.append(pb_utils.InferenceResponse([out]))
        return responses
"""


def test_per_request_triton_errors(tmp_path: Path) -> None:
    backend = load(tmp_path, PER_REQUEST_ERROR_MODEL, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    values = [-4, 0, 1, 5]
    results = backend.execute(
        [Request(request_id=str(v), inputs={"IN": np.array([v], np.int32)}) for v in values]
    )
    bad_arg, not_found, internal, ok = results

    assert isinstance(bad_arg.error, InvalidArgument)
    assert bad_arg.error.code == "INVALID_ARG"
    assert bad_arg.error.message == "negative input -4"
    assert isinstance(not_found.error, ModelNotFound)
    assert not_found.error.message == "nothing at zero"
    assert isinstance(internal.error, Internal)  # TritonError's default code is INTERNAL
    assert internal.error.message == "default code"
    assert internal.outputs == {}  # outputs next to an error are ignored
    assert ok.error is None
    np.testing.assert_array_equal(ok.outputs["OUT"], np.array([50], np.int32))


RAISING_MODEL = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        kind = int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])
        if kind == 0:
            raise ValueError("cannot handle this")
        if kind == 1:
            raise pb_utils.TritonModelException("model says no")
        raise pb_utils.TritonError("raised with a code", pb_utils.TritonError.UNAVAILABLE)
"""


def _two_requests(first_value: int) -> list[Request]:
    return [
        Request(request_id="a", inputs={"IN": np.array([first_value], np.int32)}),
        Request(request_id="b", inputs={"IN": np.array([9], np.int32)}),
    ]


def test_execute_raising_fails_every_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = load(tmp_path, RAISING_MODEL, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))

    with caplog.at_level(logging.ERROR, logger="workers.python_backend"):
        results = backend.execute(_two_requests(0))
    assert len(results) == 2
    for result in results:
        assert isinstance(result.error, Internal)
        assert result.error.message == "python model 'm': execute() raised ValueError: cannot handle this"
        assert result.outputs == {}
    assert any(rec.exc_info and rec.exc_info[0] is ValueError for rec in caplog.records)

    results = backend.execute(_two_requests(1))
    assert [r.error.message for r in results if r.error] == [
        "python model 'm': execute() raised TritonModelException: model says no"
    ] * 2

    results = backend.execute(_two_requests(2))
    for result in results:
        assert isinstance(result.error, Unavailable)
        assert result.error.message == "raised with a code"


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ("[good]", "execute returned 1 responses for 2 requests"),
        ("[good, good, good]", "execute returned 3 responses for 2 requests"),
        ("(good, good)", "execute returned a tuple, expected a list of 2 pb_utils.InferenceResponse"),
        ("None", "execute returned None for 2 requests"),
        ("[good, None]", "execute returned None as response 1"),
        ("[good, 'oops']", "execute returned a str as response 1, expected pb_utils.InferenceResponse"),
    ],
)
def test_malformed_execute_return_fails_every_request(tmp_path: Path, returned: str, expected: str) -> None:
    source = f"""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            good = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))])
            return {returned}
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    results = backend.execute(_two_requests(3))
    assert len(results) == 2
    for result in results:
        assert isinstance(result.error, Internal)
        assert result.error.message.startswith(f"python model 'm': {expected}")
        assert result.outputs == {}


def test_undeclared_output_is_an_error_for_that_request(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                name = "OUT" if request.request_id() == "good" else "SURPRISE"
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, np.array([2], np.int32))]))
            return out
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    good, bad = backend.execute(
        [
            Request(request_id="good", inputs={"IN": np.array([1], np.int32)}),
            Request(request_id="bad", inputs={"IN": np.array([1], np.int32)}),
        ]
    )
    assert good.error is None
    np.testing.assert_array_equal(good.outputs["OUT"], np.array([2], np.int32))
    assert isinstance(bad.error, Internal)
    assert bad.error.message == (
        "python model 'm': response 1: output 'SURPRISE' is not declared in the model config (declared: OUT)"
    )


def test_response_sender_needs_a_decoupled_model(tmp_path: Path) -> None:
    source = """
    class TritonPythonModel:
        def execute(self, requests):
            requests[0].get_response_sender()
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    [result] = backend.execute([Request(request_id="r", inputs={"IN": np.array([1], np.int32)})])
    assert isinstance(result.error, Internal)
    assert "get_response_sender() needs a decoupled model" in result.error.message


DECOUPLED_CONFIG = (
    ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32") + "model_transaction_policy {{ decoupled: true }}"
)


def test_decoupled_model_streams_through_emit(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                sender = request.get_response_sender()
                for k in range(3):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", value + k)]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
    """
    backend = load(tmp_path, source, DECOUPLED_CONFIG)
    got: list[tuple[str, list[int], bool]] = []
    requests = [
        Request(
            request_id=rid,
            inputs={"IN": np.array([base], np.int32)},
            emit=lambda result, final, rid=rid: got.append(
                (rid, [int(v) for v in result.outputs["OUT"]] if result.outputs else [], final)
            ),
        )
        for rid, base in (("a", 10), ("b", 20))
    ]
    assert backend.execute(requests) == []
    assert got == [
        ("a", [10], False), ("a", [11], False), ("a", [12], False), ("a", [], True),
        ("b", [20], False), ("b", [21], False), ("b", [22], False), ("b", [], True),
    ]  # fmt: skip


def test_decoupled_sender_refuses_sends_after_the_final_one(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            sender = requests[0].get_response_sender()
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    """
    backend = load(tmp_path, source, DECOUPLED_CONFIG)
    finals: list[bool] = []
    request = Request(
        request_id="r", inputs={"IN": np.array([1], np.int32)}, emit=lambda r, f: finals.append(f)
    )
    [result] = backend.execute([request])
    assert finals == [True]
    assert isinstance(result.error, Internal)
    assert "final response was already sent" in result.error.message


# --------------------------------------------------------------------------------------------------
# Load failures
# --------------------------------------------------------------------------------------------------


def test_initialize_raising_fails_load_with_file_and_cause(tmp_path: Path) -> None:
    source = """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("weights missing in " + args["model_repository"])

        def execute(self, requests):
            return []
    """
    ctx = make_ctx(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    modules_before = set(sys.modules)
    with pytest.raises(Internal) as info:
        create().load(ctx)
    path = ctx.version_dir / "model.py"
    assert str(info.value) == (
        f"python model 'm' version 1 ({path}): initialize() raised "
        f"RuntimeError: weights missing in {ctx.model_dir}"
    )
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not {m for m in set(sys.modules) - modules_before if m.startswith("_meshserve_model_")}
    assert str(ctx.version_dir) not in sys.path


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def broken(:\n    pass\n", "import failed: SyntaxError: "),
        (
            "import no_such_module_xyz\n",
            "import failed: ModuleNotFoundError: No module named 'no_such_module_xyz'",
        ),
        ("raise SystemExit(3)\n", "import failed: SystemExit: 3"),
        ("class Other:\n    pass\n", "the file defines no class TritonPythonModel"),
        ("class TritonPythonModel:\n    pass\n", "TritonPythonModel has no execute() method"),
    ],
)
def test_import_failures_name_the_file(tmp_path: Path, source: str, expected: str) -> None:
    ctx = make_ctx(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    with pytest.raises(Internal) as info:
        create().load(ctx)
    assert str(info.value).startswith(
        f"python model 'm' version 1 ({ctx.version_dir / 'model.py'}): {expected}"
    )


def test_missing_model_file(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "", ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    (ctx.version_dir / "model.py").unlink()
    with pytest.raises(Internal, match=r"model\.py\): model file not found"):
        create().load(ctx)


# --------------------------------------------------------------------------------------------------
# Logger, finalize, async, module isolation
# --------------------------------------------------------------------------------------------------

LOGGING_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        out_config = pb_utils.get_output_config_by_name(config, "OUT")
        in_config = pb_utils.get_input_config_by_name(config, "IN")
        self.dtype = pb_utils.triton_string_to_numpy(out_config["data_type"])
        assert pb_utils.get_output_config_by_name(config, "NOPE") is None
        logger = pb_utils.Logger
        logger.log_info(f"init: IN is {in_config['data_type']}, OUT is {self.dtype.__name__}")

    def execute(self, requests):
        logger = pb_utils.Logger
        logger.log_warn("warn msg")
        logger.log_error("error msg")
        logger.log_verbose("verbose msg")
        logger.log("explicit warning", logger.WARNING)
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", (x * 2).astype(self.dtype))]))
        return out
"""


def test_logger_and_config_helpers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_FP64")
    with caplog.at_level(logging.DEBUG, logger="workers.python_model"):
        backend = load(tmp_path, LOGGING_MODEL, config)
        [result] = backend.execute([Request(request_id="r", inputs={"IN": np.array([1.25])})])
    assert result.error is None
    assert result.outputs["OUT"].dtype == np.float64
    np.testing.assert_array_equal(result.outputs["OUT"], np.array([2.5]))
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "workers.python_model"]
    assert records == [
        ("INFO", "init: IN is TYPE_FP64, OUT is float64"),
        ("WARNING", "warn msg"),
        ("ERROR", "error msg"),
        ("DEBUG", "verbose msg"),
        ("WARNING", "explicit warning"),
    ]
    # the record points at the model's own file, not at pb_utils
    model_records = [r for r in caplog.records if r.name == "workers.python_model"]
    assert all(r.pathname.endswith("model.py") for r in model_records)


def test_unload_calls_finalize_and_forgets_the_module(tmp_path: Path) -> None:
    marker = tmp_path / "finalized.txt"
    source = f"""
    class TritonPythonModel:
        def execute(self, requests):
            return []

        def finalize(self):
            with open({str(marker)!r}, "a") as f:
                f.write("done")
    """
    ctx = make_ctx(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    backend = create()
    backend.load(ctx)
    module_name = backend._module_name
    assert module_name is not None and module_name in sys.modules
    assert str(ctx.version_dir) in sys.path
    backend.unload()
    assert marker.read_text() == "done"
    assert module_name not in sys.modules
    assert str(ctx.version_dir) not in sys.path
    [after] = backend.execute([Request(request_id="r", inputs={"IN": np.array([1], np.int32)})])
    assert isinstance(after.error, Unavailable)


def test_finalize_error_is_reported(tmp_path: Path) -> None:
    source = """
    class TritonPythonModel:
        def execute(self, requests):
            return []
        def finalize(self):
            raise OSError("disk gone")
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    with pytest.raises(Internal, match=r"finalize\(\) raised OSError: disk gone"):
        backend.unload()


def test_async_execute_runs_on_one_persistent_loop(tmp_path: Path) -> None:
    source = """
    import asyncio
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        async def initialize(self, args):
            self.loops = []

        async def execute(self, requests):
            await asyncio.sleep(0)
            self.loops.append(id(asyncio.get_running_loop()))
            out = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                same = np.array([len(set(self.loops))], np.int32)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x + same)]))
            return out
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    for _ in range(3):
        [result] = backend.execute([Request(request_id="r", inputs={"IN": np.array([10], np.int32)})])
        assert result.error is None
        np.testing.assert_array_equal(result.outputs["OUT"], np.array([11], np.int32))  # one loop seen
    backend.unload()


def test_two_models_with_same_file_name_and_sibling_imports(tmp_path: Path) -> None:
    template = """
    import numpy as np
    import triton_python_backend_utils as pb_utils
    from {helper} import FACTOR

    VALUE = {value}

    class TritonPythonModel:
        def execute(self, requests):
            return [
                pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([VALUE * FACTOR], np.int32))])
                for _ in requests
            ]
    """
    config = ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32")
    first = load(
        tmp_path,
        template.format(helper="helper_a", value=1),
        config,
        name="first",
        files={"helper_a.py": "FACTOR = 10\n"},
    )
    second = load(
        tmp_path,
        template.format(helper="helper_b", value=2),
        config,
        name="second",
        files={"helper_b.py": "FACTOR = 100\n"},
    )
    request = Request(request_id="r", inputs={"IN": np.array([0], np.int32)})
    [r1] = first.execute([request])
    [r2] = second.execute([request])
    assert int(r1.outputs["OUT"][0]) == 10
    assert int(r2.outputs["OUT"][0]) == 200
    assert first._module_name != second._module_name
    first.unload()
    second.unload()


def test_no_requests_means_no_call(tmp_path: Path) -> None:
    source = """
    class TritonPythonModel:
        def execute(self, requests):
            raise AssertionError("called with no requests")
    """
    backend = load(tmp_path, source, ONE_IN_ONE_OUT_CONFIG.replace("{dtype}", "TYPE_INT32"))
    assert backend.execute([]) == []


# --------------------------------------------------------------------------------------------------
# pb_utils itself
# --------------------------------------------------------------------------------------------------


def test_type_helpers() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_string_to_numpy("TYPE_BOOL") is bool
    assert pb_utils.triton_string_to_numpy("TYPE_UINT16") is np.uint16
    with pytest.raises(KeyError, match="TYPE_NOPE"):
        pb_utils.triton_string_to_numpy("TYPE_NOPE")
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.dtype(np.bool_)) == 1
    assert pb_utils.numpy_to_triton_type(np.object_) == 13
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.complex64) is None
    assert pb_utils.triton_to_numpy_type(8) is np.int32
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    assert pb_utils.triton_to_numpy_type(14) is None  # BF16


def test_triton_error_codes_and_messages() -> None:
    codes = {
        pb_utils.TritonError.UNKNOWN: "UNKNOWN",
        pb_utils.TritonError.INTERNAL: "INTERNAL",
        pb_utils.TritonError.NOT_FOUND: "NOT_FOUND",
        pb_utils.TritonError.INVALID_ARG: "INVALID_ARG",
        pb_utils.TritonError.UNAVAILABLE: "UNAVAILABLE",
        pb_utils.TritonError.UNSUPPORTED: "UNSUPPORTED",
        pb_utils.TritonError.ALREADY_EXISTS: "ALREADY_EXISTS",
        pb_utils.TritonError.CANCELLED: "CANCELLED",
    }
    assert sorted(codes) == list(range(8))
    for code, wire in codes.items():
        err = pb_utils.TritonError("msg", code)
        assert (err.code(), err.wire_code(), err.message()) == (code, wire, "msg")
    default = pb_utils.TritonError("plain")
    assert default.code() == pb_utils.TritonError.INTERNAL
    exc = pb_utils.TritonModelException("why")
    assert (exc.message(), str(exc)) == ("why", "why")


def test_inference_response_and_tensor_api() -> None:
    out = pb_utils.Tensor("OUT", np.arange(6, dtype=np.float32).reshape(2, 3))
    response = pb_utils.InferenceResponse(output_tensors=[out])
    assert not response.has_error() and response.error() is None
    assert pb_utils.get_output_tensor_by_name(response, "OUT") is out
    assert pb_utils.get_output_tensor_by_name(response, "MISSING") is None
    assert out.name() == "OUT"
    assert out.shape() == [2, 3]
    assert out.triton_dtype() == 11
    assert out.is_cpu() is True

    failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("bad", pb_utils.TritonError.INVALID_ARG))
    assert failed.has_error() and failed.error().message() == "bad"  # type: ignore[union-attr]
    assert failed.output_tensors() == []
    with pytest.raises(pb_utils.TritonModelException, match='"output_tensors" must be a list'):
        pb_utils.InferenceResponse(output_tensors=out)  # type: ignore[arg-type]

    words = pb_utils.Tensor("W", np.array(["héllo", "x"]))  # str arrays are encoded to UTF-8 bytes
    assert list(words.as_numpy()) == ["héllo".encode(), b"x"]
    assert words.triton_dtype() == 13
    reinterpreted = pb_utils.Tensor("R", np.array([1.0], np.float32), triton_dtype=8)
    assert reinterpreted.as_numpy().dtype == np.int32
    assert int(reinterpreted.as_numpy()[0]) == 0x3F800000


def test_dlpack_roundtrip() -> None:
    source = pb_utils.Tensor("X", np.arange(4, dtype=np.int64))
    capsule = source.to_dlpack()
    back = pb_utils.Tensor.from_dlpack("Y", capsule)
    assert back.name() == "Y"
    np.testing.assert_array_equal(back.as_numpy(), np.arange(4))
    shared = np.arange(3, dtype=np.float32)
    view = pb_utils.Tensor.from_dlpack("Z", shared)  # objects with __dlpack__ work too, without a copy
    shared[0] = 42.0
    assert float(view.as_numpy()[0]) == 42.0

    torch = pytest.importorskip("torch")
    as_torch = torch.utils.dlpack.from_dlpack(pb_utils.Tensor("T", np.array([1, 2, 3], np.int32)).to_dlpack())
    assert as_torch.tolist() == [1, 2, 3]
    from_torch = pb_utils.Tensor.from_dlpack("F", torch.tensor([[1.5, 2.5]]))
    assert from_torch.shape() == [1, 2]
    np.testing.assert_array_equal(from_torch.as_numpy(), np.array([[1.5, 2.5]], np.float32))
    with pytest.raises(pb_utils.TritonModelException, match="BYTES tensors cannot be exported"):
        pb_utils.Tensor("B", bytes_array(b"a")).to_dlpack()


def test_byte_tensor_serialization_roundtrip() -> None:
    arr = bytes_array(b"a", b"", b"\x00\xff")
    encoded = pb_utils.serialize_byte_tensor(arr)
    assert encoded == b"\x01\x00\x00\x00a" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\x00\xff"
    assert encoded is not None
    assert list(pb_utils.deserialize_bytes_tensor(encoded)) == [b"a", b"", b"\x00\xff"]
    assert pb_utils.serialize_byte_tensor(np.arange(3)) is None
    with pytest.raises(pb_utils.TritonModelException, match="truncated"):
        pb_utils.deserialize_bytes_tensor(b"\x05\x00\x00\x00ab")


def test_unsupported_request_features_raise_clearly() -> None:
    request = pb_utils.InferenceRequest(
        model_name="other", requested_output_names=["OUT"], inputs=[pb_utils.Tensor("IN", np.zeros(1))]
    )
    assert request.model_name() == "other"
    assert request.requested_output_names() == ["OUT"]
    with pytest.raises(pb_utils.TritonModelException, match="business logic scripting"):
        request.exec()
    with pytest.raises(pb_utils.TritonModelException, match="rescheduling is not supported"):
        request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL)  # the default: accepted
    assert (
        pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
        pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
        pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    ) == (1, 1, 2, 2)


def test_pb_utils_is_importable_under_triton_name(tmp_path: Path) -> None:
    load(tmp_path, ADD_SUB_MODEL, ADD_SUB_CONFIG)
    import triton_python_backend_utils

    assert triton_python_backend_utils is pb_utils


def test_model_config_setters_follow_triton() -> None:
    config = pb_utils.ModelConfig(
        {"name": "m", "max_batch_size": 0, "input": [{"name": "A", "data_type": "TYPE_FP32", "dims": [2]}]}
    )
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [2]})  # agrees: fine
    config.add_input({"name": "B", "data_type": "TYPE_INT32", "dims": [-1]})
    config.add_output({"name": "C", "data_type": "TYPE_FP32", "dims": [2]})
    config.set_max_batch_size(4)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    d = config.as_dict()
    assert [i["name"] for i in d["input"]] == ["A", "B"] and d["output"][0]["name"] == "C"
    assert (
        d["max_batch_size"] == 4
        and d["dynamic_batching"] == {}
        and d["model_transaction_policy"] == {"decoupled": True}
    )
    with pytest.raises(ValueError, match="contradicts"):
        config.add_input({"name": "A", "data_type": "TYPE_INT8", "dims": [2]})
    with pytest.raises(ValueError, match="already sets max_batch_size 4"):
        config.set_max_batch_size(8)
    with pytest.raises(ValueError, match="needs dims"):
        config.add_output({"name": "D", "data_type": "TYPE_FP32"})
