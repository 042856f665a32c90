"""The hand-made stack many teams run today: Flask + Waitress serving the benchmark's models over JSON.

    python bench/flask_peer.py --repository DIR --port P [--threads 8]

Serves every model of a meshserve repository written by bench/workloads.py:
`POST /<model>` with `{"data": [...]}` answers `{"output": [...]}`.
- a TorchScript model (`<model>/1/model.pt`): `data` is one row (a list of floats) or a list of rows;
  `output` has the same rank.
- `simple`: `data` is `[INPUT0, INPUT1]` (two lists of 16 ints); `output` is `[INPUT0 + INPUT1, INPUT0 - INPUT1]`.
`GET /health` answers 200 once every model is loaded.  Used by bench/batching.py, not by meshserve.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask, Response, abort, jsonify, request
from waitress import serve  # type: ignore[import-untyped]

Handler = Callable[[Any], Any]


def torch_handler(path: Path) -> Handler:
    module = torch.jit.load(str(path)).eval()

    def run(data: Any) -> Any:
        rows = np.asarray(data, dtype=np.float32)
        batch = rows.reshape(1, -1) if rows.ndim == 1 else rows
        with torch.inference_mode():
            out = module(torch.from_numpy(batch)).numpy()
        return (out[0] if rows.ndim == 1 else out).tolist()

    return run


def simple_handler(data: Any) -> Any:
    a = np.asarray(data[0], dtype=np.int32)
    b = np.asarray(data[1], dtype=np.int32)
    return [(a + b).tolist(), (a - b).tolist()]


def create_app(repository: Path) -> Flask:
    handlers: dict[str, Handler] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if (model_dir / "1" / "model.pt").is_file():
            handlers[model_dir.name] = torch_handler(model_dir / "1" / "model.pt")
        elif model_dir.name == "simple":
            handlers["simple"] = simple_handler
    app = Flask("flask_peer")

    @app.get("/health")
    def health() -> Response:
        return jsonify(models=sorted(handlers))

    @app.post("/<model>")
    def infer(model: str) -> Response:
        handler = handlers.get(model)
        if handler is None:
            abort(404)
        payload = request.get_json(force=True)
        return jsonify(output=handler(payload["data"]))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    serve(create_app(args.repository), host=args.host, port=args.port, threads=args.threads)


if __name__ == "__main__":
    main()
