"""The package layout of docs/design.md §2: tool folders live inside the ecm_edge namespace, nothing generic leaks."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"ecm_edge.train": "train", "ecm_edge.export": "export", "ecm_edge.kernels": "kernels"}


@pytest.mark.parametrize("module", sorted(MAPPED))
def test_mapped_folders_import_under_ecm_edge(module):
    imported = __import__(module, fromlist=["_"])
    assert imported.__name__ == module
    assert Path(imported.__file__).parent.name == MAPPED[module]


def test_runtime_imports_without_torch():
    runtime = ["ecm_edge.config", "ecm_edge.cli.main", "ecm_edge.data.dataset", "ecm_edge.data.synth",
               "ecm_edge.evaluation", "ecm_edge.postprocess", "ecm_edge.kernels.cpu", "ecm_edge.rawpred",
               "ecm_edge.manifest", "ecm_edge.runtime.engines", "ecm_edge.runtime.localizer", "ecm_edge.runtime.engine",
               "ecm_edge.runtime.sources", "ecm_edge.runtime.extractors", "ecm_edge.runtime.sinks", "ecm_edge.viz"]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {runtime!r}];"
            "from ecm_edge import Localizer;"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True)
    (wheel,) = out.glob("ecm_edge-*.whl")
    target = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def test_wheel_has_only_the_ecm_edge_namespace(installed_wheel):
    top_level = {p.name for p in installed_wheel.iterdir()}
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"ecm_edge"}
    for package, folder in MAPPED.items():
        assert (installed_wheel / "ecm_edge" / package.split(".")[1] / "__init__.py").is_file(), folder
    assert (installed_wheel / "ecm_edge" / "configs" / "thumos14.yaml").is_file()


def test_generic_names_not_importable_from_installed_wheel(installed_wheel, tmp_path):
    # -S: no site-packages (so neither the editable install nor other packages answer); only the wheel's files.
    code = (
        "import importlib.util as u, sys;"
        "sys.path.insert(0, sys.argv[1]);"
        "assert all(u.find_spec(n) is None for n in ('train', 'export', 'kernels', 'configs'));"
        "spec = u.find_spec('ecm_edge.kernels');"
        "assert spec is not None and spec.name == 'ecm_edge.kernels' and sys.argv[1] in spec.origin, spec"
    )
    subprocess.run([sys.executable, "-S", "-c", code, str(installed_wheel)], check=True, cwd=tmp_path)
