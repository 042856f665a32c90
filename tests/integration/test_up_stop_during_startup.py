"""``meshserve up`` stopped (SIGTERM, SIGINT) while it is still starting: a model takes minutes to load,
the signal comes once its worker is loading; ``up`` stops every child it started and exits promptly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshserve.harness import ROOT, wait_for

LOAD_S = 300  # far longer than the bound below: only the stop can end the start-up
EXIT_WITHIN_S = 25.0  # STARTUP_STOP_GRACE_S (5 s) per stage of the stop, with room on a busy machine

CONFIG = """name: "slow_load"
backend: "python"
max_batch_size: 0
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

MODEL = f"""import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({LOAD_S})

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
            for r in requests
        ]
"""


def _children(pid: int) -> dict[int, str]:
    """Live processes whose parent is ``pid`` (``up``'s children run in their own sessions): cmdline."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_startup_stops_every_child_and_exits_promptly(
    tmp_path: Path, sig: signal.Signals
) -> None:
    model = tmp_path / "models" / "slow_load"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL)
    log = tmp_path / "up.log"
    with log.open("w") as err:
        up = subprocess.Popen(
            [sys.executable, "-m", "meshserve.cli", "up", "--model-repository", str(tmp_path / "models"),
             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    seen: dict[int, str] = {}
    try:

        def worker_is_loading() -> bool:
            seen.update(_children(up.pid))
            return any("--model-name slow_load" in cmd for cmd in seen.values())

        assert wait_for(worker_is_loading, timeout_s=120), log.read_text()[-3000:]
        time.sleep(1.0)  # into the model's initialize
        seen.update(_children(up.pid))
        assert up.poll() is None, log.read_text()[-3000:]
        sent = time.monotonic()
        up.send_signal(sig)
        try:
            up.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up did not exit {EXIT_WITHIN_S}s after {sig.name}: {log.read_text()[-3000:]}")
        took = time.monotonic() - sent
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert up.stdout is not None and "MESHSERVE_READY" not in up.stdout.read()  # it never served
    names = sorted(cmd.split(" -m meshserve.cli ")[-1].split(" ")[0] for cmd in seen.values())
    assert {"batcher", "gateway", "worker"} <= set(names), names  # what had started
    assert any("nats-server" in cmd for cmd in seen.values()), seen
    left = {pid: cmd for pid, cmd in seen.items() if _alive(pid)}
    assert left == {}, left
    assert "stop signal during start-up" in log.read_text()
    assert took < EXIT_WITHIN_S, took
