"""The protobuf side of the property tests, in a child process (see tests/unit/_grpc_properties.py:
``meshserve.pb.grpc_service_pb2`` must not share a process with tritonclient)."""

from __future__ import annotations

import os
import subprocess
import sys

from meshserve.harness import ROOT


def test_grpc_codec_properties_in_their_own_process() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit._grpc_properties"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.count("ok   ") == 3, done.stdout
