"""Compiling a kernel module's CUDA kernels to PTX without a GPU, for the PTX tests of the offline and causal kernels.

The compilation runs in a subprocess because the default test session runs numba's CUDA simulator
(tests/conftest.py), which has no compiler. A missing numba-cuda or NVVM library skips the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

NO_NVVM = 77  # exit code of the script when numba-cuda or its NVVM library is missing
COMPILE_TIMEOUT_S = 600  # every device function is inlined into every kernel: tens of seconds per target

_IMPORTS = f"""
import json, sys
try:
    from numba import cuda, typeof
    from numba.cuda.cudadrv.error import NvvmSupportError
except ImportError as exc:
    print(exc); sys.exit({NO_NVVM})
"""
_COMPILE = f"""
report = {{}}
for name in KERNEL_NAMES:
    for cc in CAPABILITIES:
        try:
            ptx, _ = cuda.compile_ptx(getattr(built, name).py_func, signatures[name], cc=cc)
        except NvvmSupportError as exc:
            print(exc); sys.exit({NO_NVVM})
        report[f"{{name}}/{{cc[0]}}.{{cc[1]}}"] = {{"target": f"sm_{{cc[0]}}{{cc[1]}}" in ptx,
                                                 "f64_fma": "fma.rn.f64" in ptx, "f32_fma": "fma.rn.f32" in ptx}}
report["built"] = sorted(vars(built))
print(json.dumps(report))
"""


def ptx_report(setup: str, capabilities: list[tuple[int, int]]) -> dict:
    """Compile every kernel for every compute capability in a subprocess with the real CUDA target.

    ``setup``: Python lines that define ``built`` (the namespace of compiled kernels), ``KERNEL_NAMES`` (those
    to compile) and ``signatures`` (their argument types by name); ``numpy as np``, ``cuda`` and ``typeof`` are
    imported before them. Returns, per ``"<kernel>/<major>.<minor>"``: whether the PTX names the target
    (``target``) and holds a float64 / float32 fused multiply-add (``f64_fma``, ``f32_fma``); and ``built``,
    the names in the kernel namespace."""
    script = "\n".join([_IMPORTS, "import numpy as np", f"CAPABILITIES = {capabilities!r}",
                        textwrap.dedent(setup), _COMPILE])
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=COMPILE_TIMEOUT_S)
    if done.returncode == NO_NVVM:
        pytest.skip(f"numba-cuda or its NVVM library is missing here ({done.stdout.strip()}); install "
                    "numba-cuda[cu13] to compile CUDA kernels")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
