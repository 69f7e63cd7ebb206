"""What this machine offers: package versions, CUDA visibility, TensorRT, the CPU's int8 instructions. Used by
``checks``, manifests and the runtime's choice of precision."""

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


# CPU features that give ONNX Runtime's int8 GEMM kernels (MLAS) their speed, best first: (feature, how to say it).
# Names are numpy's dispatcher names, or Linux /proc/cpuinfo flags in upper case where numpy has none.
INT8_DOT_PRODUCT: tuple[tuple[str, str], ...] = (
    ("AMX_INT8", "AMX-INT8"),
    ("AVX512VNNI", "AVX512-VNNI"),
    ("AVX_VNNI", "AVX-VNNI"),
    ("AVX2", "AVX2"),
    ("ASIMDDP", "Arm dot product (ASIMDDP)"),
)


def cpu_features() -> set[str]:
    """The CPU's instruction-set features: what numpy's dispatcher detected (``AVX2``, ``AVX512VNNI``,
    ``ASIMDDP``, ...) and, on Linux, the ``flags`` / ``Features`` of ``/proc/cpuinfo``, all upper case."""
    features: set[str] = set()
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy ≥ 2

        features |= {name for name, present in __cpu_features__.items() if present}
    except ImportError:  # pragma: no cover - numpy 1.x keeps it in numpy.core
        try:
            from numpy.core._multiarray_umath import __cpu_features__

            features |= {name for name, present in __cpu_features__.items() if present}
        except ImportError:
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    features |= {flag.upper() for flag in value.split()}
                    break
    except OSError:
        pass
    return features


def cpu_int8_instructions(features: set[str] | None = None) -> str | None:
    """The best integer dot-product instructions this CPU offers ONNX Runtime's int8 kernels (``AVX512-VNNI``,
    ``AVX2``, ...), or None when it has none of :data:`INT8_DOT_PRODUCT`."""
    features = cpu_features() if features is None else features
    return next((label for name, label in INT8_DOT_PRODUCT if name in features), None)


def environment_report() -> dict[str, str]:
    """Everything ``ecm-edge checks`` prints, as an ordered mapping."""
    report = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in OPTIONAL_PACKAGES:
        report[dist] = package_version(dist) or "not installed"
    gpu = gpu_name_and_capability()
    report["cuda gpu"] = f"{gpu[0]} (compute capability {gpu[1][0]}.{gpu[1][1]})" if gpu else "none visible"
    report["cuda simulator"] = "on (NUMBA_ENABLE_CUDASIM=1)" if cuda_simulator_enabled() else "off"
    report["cpu int8"] = cpu_int8_instructions() or "no integer dot-product instructions"
    return report
