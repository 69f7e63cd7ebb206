"""What this machine offers: package versions, CUDA visibility, TensorRT. Used by ``checks`` and manifests."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

OPTIONAL_PACKAGES: dict[str, str] = {
    # distribution name -> import name
    "numpy": "numpy",
    "numba": "numba",
    "numba-cuda": "numba.cuda",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "opencv-python-headless": "cv2",
    "tensorrt": "tensorrt",
}


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    candidates = [distribution]
    if distribution == "tensorrt":
        candidates += ["tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"]
    if distribution == "opencv-python-headless":
        candidates += ["opencv-python", "opencv-contrib-python"]
    for name in candidates:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if distribution == "tensorrt":  # JetPack installs TensorRT's Python bindings without pip metadata
        try:
            return importlib.import_module("tensorrt").__version__
        except Exception:
            return None
    return None


def cuda_simulator_enabled() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def cuda_gpu_visible() -> bool:
    """True when numba can see a real CUDA GPU (never under the simulator)."""
    if cuda_simulator_enabled():
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def gpu_name_and_capability() -> tuple[str, tuple[int, int]] | None:
    if not cuda_gpu_visible():
        return None
    from numba import cuda

    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
    return name, tuple(device.compute_capability)


def environment_report() -> dict[str, str]:
    """Everything ``ecm-edge checks`` prints, as an ordered mapping."""
    report = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in OPTIONAL_PACKAGES:
        report[dist] = package_version(dist) or "not installed"
    gpu = gpu_name_and_capability()
    report["cuda gpu"] = f"{gpu[0]} (compute capability {gpu[1][0]}.{gpu[1][1]})" if gpu else "none visible"
    report["cuda simulator"] = "on (NUMBA_ENABLE_CUDASIM=1)" if cuda_simulator_enabled() else "off"
    return report
