"""The package's layers hold: ``lint-imports`` keeps every import-linter contract of pyproject.toml.

The contracts ([tool.importlinter]) say which part of ``ecm_edge`` may import which: the runtime, the kernels and
the data formats never import training, export, the benchmarks or the CLI; the kernels nothing of the runtime;
nothing the CLI but ``python -m ecm_edge``; and so on. Imports inside functions count.

train/, export/, kernels/ and configs/ are installed as ``ecm_edge.train`` ... (pyproject's package-dir). In the
checkout, ``ecm_edge/`` links to them so that ``lint-imports`` runs as is at the root; this test checks what a
user installs instead: it lays the package out as a wheel does (each package pyproject lists, its ``.py`` files)
in a temporary folder and runs ``lint-imports`` there with this repository's pyproject.toml.
``python tests/test_layers.py`` prints the report alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def package_source(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools installs ``package`` from: its nearest mapped ancestor in package-dir, plus the
    rest of its name as folders."""
    parts = package.split(".")
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return ROOT.joinpath(package_dir[prefix], *parts[cut:])
    return ROOT.joinpath(*parts)


def installed_layout(dest: Path) -> Path:
    """The packages of pyproject.toml under ``dest`` as a wheel lays them out; ``dest``."""
    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    package_dir = settings.get("package-dir", {})
    for package in settings["packages"]:
        source = package_source(package, package_dir)
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for file in source.glob("*.py"):
            shutil.copyfile(file, target / file.name)
    return dest


def lint_imports(workdir: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the installed layout of this checkout (built in ``workdir``)."""
    layout = installed_layout(workdir / "site")
    env = {**os.environ, "PYTHONPATH": str(layout)}
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, str(PYPROJECT), "--no-cache"],
                          cwd=layout, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_layout_is_the_package_of_this_checkout(tmp_path):
    layout = installed_layout(tmp_path)
    for module in ("ecm_edge/__init__.py", "ecm_edge/train/__main__.py", "ecm_edge/export/pipeline.py",
                   "ecm_edge/kernels/params.py", "ecm_edge/runtime/engines/__init__.py",
                   "ecm_edge/export/torch_engine.py"):
        assert (layout / module).is_file(), module


def test_import_contracts_are_kept(tmp_path):
    done = lint_imports(tmp_path)
    assert "Contracts:" in done.stdout, done.stdout + done.stderr  # the linter ran (not a configuration error)
    assert done.returncode == 0, f"broken import contracts (pyproject.toml [tool.importlinter]):\n{done.stdout}" \
                                 f"{done.stderr}"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="ecm-edge-layers-") as tmp:
        result = lint_imports(Path(tmp))
    print(result.stdout + result.stderr, end="")
    sys.exit(result.returncode)
