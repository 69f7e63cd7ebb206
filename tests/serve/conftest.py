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


# The pytriton wheel's server has the Python backend only, so the ONNX Runtime platform model cannot load here. For
# the business-logic-scripting path, a Python model that runs the same model.onnx with ONNX Runtime stands in for it
# under the same name, inputs and outputs: ecm_stream's calls, the server's routing and batching are the real ones.
STAND_IN_MODEL_PY = '''import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = f"{args['model_repository']}/{args['model_version']}/model.onnx"
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            outputs = self.session.run(self.outputs, {self.input: x})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, o) for n, o in zip(self.outputs, outputs)]))
        return responses
'''


@pytest.fixture(scope="module")
def bls_repository(tmp_path_factory) -> tuple[Path, Path]:
    """A random model's export folder and its Triton repository with ``--triton-head bls``, the ONNX Runtime head
    model played by a Python model on the same graph (above)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.triton_repository import ONNX_MODEL, read_stamp, stamp_model

    root = tmp_path_factory.mktemp("triton-bls")
    run = save_random_deploy(root / "run")
    run_export(ExportRequest(checkpoint=run, out_dir=root / "export", precision="fp32", engine=False,
                             triton=root / "repo", triton_head="bls"))
    head = root / "repo" / ONNX_MODEL
    config = (head / CONFIG_NAME).read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "KIND_AUTO" in config
    (head / CONFIG_NAME).write_text(config.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
                                    .replace("KIND_AUTO", "KIND_CPU"))
    (head / "1" / "model.py").write_text(STAND_IN_MODEL_PY)
    stamp = read_stamp(head)
    stamp_model(head, stamp.weights_sha256, stamp.details)
    return root / "export", root / "repo"
