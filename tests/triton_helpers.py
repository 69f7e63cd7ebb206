"""A Python for the Triton server's Python backend in the tests, and free ports.

The backend stub nvidia-pytriton ships needs NumPy 1.x in the environment it embeds (``ecm_edge.serving``), and
the wheel itself pins NumPy 1.x, so an environment with NumPy 2 (this project's, for OpenCV) does not hold it. The
tests then make an *overlay* environment once (in pytest's cache): a venv holding only ``numpy<2`` and, where this
environment has no server, the nvidia-pytriton wheel (without its dependencies: the ones the server needs come
from here), whose ``.pth`` adds this environment's site-packages after its own, so ecm-edge and everything else
come from here. ``ECM_EDGE_TRITON_PYTHON`` names an interpreter to use instead.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

FOREIGN = "ecm_stream_foreign"  # the repository fixture's copy of the stream model stamped by another release
SERVER_WHEEL = "nvidia-pytriton>=0.5"  # the server binary with its Python backend (the `serve` extra's)
READY_MARK = "ecm-edge-overlay-ready"  # written last: a half-made overlay is made again

def free_ports(n: int = 3) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def server_python(cache_dir: Path) -> tuple[Path | None, str]:
    """An interpreter for the server's Python backend, or None and why there is none."""
    named = os.environ.get("ECM_EDGE_TRITON_PYTHON")
    if named:
        return Path(named), ""
    if int(np.__version__.split(".")[0]) < 2:
        return Path(sys.executable), ""
    python = cache_dir / "bin" / "python"
    if (cache_dir / READY_MARK).is_file():
        return python, ""
    packages = ["numpy<2"] if importlib.util.find_spec("pytriton") else ["numpy<2", SERVER_WHEEL]
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(cache_dir)], check=True,
                       timeout=120)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        *packages], check=True, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, (f"cannot make a NumPy 1.x environment with {' and '.join(packages)} for the server's Python "
                      f"backend ({exc} {detail.decode(errors='replace')[-300:]})")
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = cache_dir / "lib" / version / "site-packages"
    (site / "zz_ecm_edge_overlay.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    (cache_dir / READY_MARK).write_text(" ".join(packages))
    return python, ""
