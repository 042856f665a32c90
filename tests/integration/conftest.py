from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshserve.harness import ROOT, Mesh, build_repository, start_mesh

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The test mesh's payload limit: small, so the oversize tests stay cheap."""


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("mesh")
    repository = build_repository(base / "models", ROOT / "tests" / "models")
    mesh = start_mesh(
        repository,
        base / "mesh.log",
        "--strict-readiness=false",
        "--max-message-bytes",
        str(MAX_MESSAGE_BYTES),
        "--request-timeout-secs",
        "20",
    )
    try:
        yield mesh
    finally:
        code = mesh.stop()
        assert code == 0, f"meshserve up exited with {code}; log tail:\n{mesh.log()[-3000:]}"
