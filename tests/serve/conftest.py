"""The Triton tests' shared fixture: a random model exported with its Triton repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from stream_helpers import save_random_deploy
from triton_helpers import FOREIGN

from ecm_edge.triton_repository import CONFIG_NAME, STAMP_NAME, STREAM_MODEL


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> tuple[Path, Path]:
    """A random model's deploy folder and the Triton repository of its export (plus a copy stamped by another
    ecm-edge release, which must not load)."""
    pytest.importorskip("torch")
    from ecm_edge.export.pipeline import ExportRequest, run_export

    root = tmp_path_factory.mktemp("triton")
    run = save_random_deploy(root / "run")
    run_export(ExportRequest(checkpoint=run, out_dir=root / "export", precision="fp32", engine=False,
                             triton=root / "repo"))
    foreign = root / "repo" / FOREIGN
    shutil.copytree(root / "repo" / STREAM_MODEL, foreign)
    config = (foreign / CONFIG_NAME).read_text().replace(f'name: "{STREAM_MODEL}"', f'name: "{FOREIGN}"')
    (foreign / CONFIG_NAME).write_text(config)
    stamp = json.loads((foreign / STAMP_NAME).read_text())
    stamp["ecm_edge"] = "0.0.1"
    (foreign / STAMP_NAME).write_text(json.dumps(stamp))
    return run, root / "repo"
