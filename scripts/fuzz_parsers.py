"""Fuzz the gateway's parsers for a bounded time: the HTTP JSON/binary infer body, the generate body, the
protobuf ModelInferRequest, and the tensor codec — each followed by request validation.

A finding is any exception other than a client error (a MeshError with a 4xx code): that would be a
500 or a crashed request.  With atheris installed (``pip install atheris``; wheels for CPython 3.11 on
x86-64 Linux) the run is coverage-guided; without it, the same targets run under a hypothesis loop
over random bytes (no coverage feedback, still thousands of cases).

    python scripts/fuzz_parsers.py --seconds 60            # atheris if importable, else hypothesis
    python scripts/fuzz_parsers.py --seconds 60 --engine hypothesis

Exit status 0: no finding.  A finding prints the input (atheris also writes ``crash-*``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = """
backend: "python"
max_batch_size: 8
input [
  { name: "T" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "F" data_type: TYPE_FP32 dims: [ -1 ] optional: true },
  { name: "I" data_type: TYPE_INT64 dims: [ 2, -1 ] optional: true }
]
output [ { name: "O" data_type: TYPE_STRING dims: [ -1 ] } ]
"""
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "BF16", "BYTES", "??"]


class Targets:
    """Imported lazily, so atheris can instrument them."""

    def __init__(self) -> None:
        from gateway import generate, grpc_codec, http_codec, validate
        from gateway.models import ModelView
        from meshserve import errors, tensors
        from meshserve.model_config import complete_config, parse_config
        from meshserve.pb import grpc_service_pb2
        from meshserve.security import RequestLimits

        config = parse_config(MODEL)
        complete_config(config, "m")
        self.view = ModelView.from_config("m", 1, config)
        self.limits = RequestLimits(max_tensor_elements=1 << 16)
        self.http, self.gen, self.grpc, self.validate = http_codec, generate, grpc_codec, validate
        self.tensors, self.errors, self.pb = tensors, errors, grpc_service_pb2

    def _client_error(self, exc: BaseException) -> bool:
        return isinstance(exc, self.errors.MeshError) and exc.http_status < 500

    def run(self, which: int, data: bytes, small: int) -> None:
        try:
            self._dispatch(which % 5, data, small)
        except Exception as exc:
            if not self._client_error(exc):
                raise

    def _validate(self, call: Any) -> None:
        self.validate.build_request(call, self.view, 10.0, 1 << 20, self.limits)

    def _dispatch(self, which: int, data: bytes, small: int) -> None:
        if which == 0:  # HTTP body, JSON only
            self._validate(self.http.decode_infer(data, None, self.view, self.limits).call)
        elif which == 1:  # HTTP body with a binary tail (header length from the input)
            header = str(small % (len(data) + 2) - 1)
            self._validate(self.http.decode_infer(data, header, self.view, self.limits).call)
        elif which == 2:  # generate
            self._validate(self.gen.decode_generate(data, self.view))
        elif which == 3:  # protobuf
            try:
                request = self.pb.ModelInferRequest.FromString(data)
            except Exception:
                return  # grpc_parse.py answers INVALID_ARGUMENT for what protobuf cannot parse
            self._validate(self.grpc.decode_infer(request))
        else:  # tensor codec: a datatype and shape from the first bytes, the rest as data
            datatype = DATATYPES[small % len(DATATYPES)]
            shape = [b - 2 for b in data[:3]]
            self.tensors.to_numpy("x", datatype, shape, data[3:])
            if datatype == "BYTES" and all(d >= 0 for d in shape):
                self.tensors.validate_bytes("x", data[3:], self.tensors.element_count(shape), 16)


SEEDS = [
    json.dumps(
        {"inputs": [{"name": "T", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]}
    ).encode(),
    json.dumps(
        {
            "inputs": [
                {"name": "F", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
            ]
        }
    ).encode()
    + b"\0" * 8,
    json.dumps({"T": ["x"], "parameters": {"p": 1}}).encode(),
]


def fuzz_atheris(seconds: int, corpus: Path | None) -> int:
    import atheris

    with atheris.instrument_imports():
        targets = Targets()

    def one_input(raw: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(raw)
        which, small = fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 1 << 16)
        targets.run(which, fdp.ConsumeBytes(fdp.remaining_bytes()), small)

    args = [sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=4096", "-print_final_stats=1"]
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(SEEDS):
            (corpus / f"seed-{i}").write_bytes(b"\0\0\0\0\0\0\0\0" + seed)
        args.append(str(corpus))
    atheris.Setup(args, one_input)
    atheris.Fuzz()  # exits the process: 0 when the time is up without a finding
    return 0


def fuzz_hypothesis(seconds: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    targets = Targets()
    inputs = st.one_of(
        st.binary(max_size=400), st.sampled_from(SEEDS), st.sampled_from(SEEDS).map(lambda s: s[:-3])
    )

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 4), inputs, st.integers(0, 1 << 16))
    def one_input(which: int, data: bytes, small: int) -> None:
        targets.run(which, data, small)

    rounds, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        one_input()  # raises (with the falsifying example printed) on a finding
        rounds += 1
    print(f"hypothesis: {rounds * 500} cases in {seconds}s, no finding")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument(
        "--corpus", type=Path, default=None, help="atheris corpus directory (kept between runs)"
    )
    args = parser.parse_args()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            print("atheris is not installed: falling back to a hypothesis loop (no coverage guidance)")
            engine = "hypothesis"
    if engine == "atheris":
        return fuzz_atheris(args.seconds, args.corpus)
    return fuzz_hypothesis(args.seconds)


if __name__ == "__main__":
    sys.exit(main())
