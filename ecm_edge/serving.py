"""Starting NVIDIA Triton Inference Server on a repository of ``ecm-edge export --triton`` (``ecm-edge serve``).

Which server: ``tritonserver`` on PATH (NVIDIA's Triton container, with its ONNX Runtime, TensorRT and Python
backends under ``/opt/tritonserver/backends``), else the binary the ``nvidia-pytriton`` wheel ships
(``pip install 'ecm-edge[serve]'``), which has the Python backend only. For the wheel's server this module does
what pytriton does: a working folder with the Python backend and the backend *stub* built for the interpreter's
Python version, the wheel's libraries on ``LD_LIBRARY_PATH``, and the interpreter's ``bin`` folder first on
``PATH`` — the stub embeds that Python, so ``model.py`` imports ``ecm_edge`` from that environment. The stub the
wheel ships is built against NumPy 1.x: with NumPy 2 in that environment every output of the Python backend
comes back empty, so a NumPy 2 environment is refused with what to do instead (``--python`` naming an
environment with ``numpy<2`` and ecm-edge).

Models load explicitly: those whose backend this server has (platform models need Triton's ``onnxruntime`` /
``tensorrt`` backends); the others are reported, not loaded. This module runs no inference and imports neither
the runtime nor ``tritonclient`` (health checks are plain HTTP).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ecm_edge.errors import ConfigError, EcmEdgeError, MissingDependencyError
from ecm_edge.triton_repository import CONFIG_NAME, STREAM_MODEL, stamped_models, verify_model

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults
CONTAINER_BACKENDS = Path("/opt/tritonserver/backends")  # where NVIDIA's container keeps its backends
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
READY_TIMEOUT_S = 120.0  # how long `serve` waits for the server and its models
POLL_S = 0.25  # health polling period while starting
EXIT_TIMEOUT_S = 5  # after SIGINT: how long Triton waits for open client connections and running requests
STOP_GRACE_S = 15.0  # after SIGINT: how long the server gets to exit before it is killed
LOG_TAIL_LINES = 15  # lines of the server's log quoted in a start failure
INSTALL_HINT = "pip install 'ecm-edge[serve]' (the nvidia-pytriton wheel ships the server) or run NVIDIA's Triton " \
               "container (tritonserver on PATH)"


@dataclass
class ServerBinary:
    """The ``tritonserver`` to run and where its pieces are."""

    path: Path
    backends: Path | None  # the backend directory; None: the server's default (the container's)
    wheel: Path | None = None  # the pytriton package folder, when the binary is the wheel's
    libs: Path | None = None  # the wheel's bundled libraries


@dataclass
class PythonEnv:
    """The interpreter whose environment the Python backend runs ``model.py`` in."""

    executable: Path
    version: str  # "3.11"
    numpy: str
    ecm_edge: str
    pytriton: Path | None = None  # the nvidia-pytriton package folder in that environment, if it has one


def find_server(python: PythonEnv | None = None) -> ServerBinary:
    """``tritonserver`` from PATH, else the nvidia-pytriton wheel's in this environment, else the one in the
    server's Python environment (``python``: a NumPy 1.x environment may hold the wheel that this one, with
    NumPy 2, cannot); a clear error when there is none."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerBinary(Path(on_path), CONTAINER_BACKENDS if CONTAINER_BACKENDS.is_dir() else None)
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations)))
    elif python is not None and python.pytriton is not None:
        package = python.pytriton
    else:
        raise MissingDependencyError("a Triton server (tritonserver on PATH, or the nvidia-pytriton wheel)",
                                     "ecm-edge serve", INSTALL_HINT)
    binary = package / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise MissingDependencyError(f"the Triton server binary (the nvidia-pytriton in {package} has none)",
                                     "ecm-edge serve", f"reinstall it: {INSTALL_HINT}")
    return ServerBinary(binary, None, package, package.parent / "nvidia_pytriton.libs")


def inspect_python(executable: str | Path) -> PythonEnv:
    """What ``executable``'s environment offers the Python backend (its version, NumPy, ecm-edge)."""
    probe = ("import sys, importlib.util, numpy, ecm_edge.version as v; "
             "s = importlib.util.find_spec('pytriton'); "
             "p = next(iter(s.submodule_search_locations)) if s and s.submodule_search_locations else ''; "
             "print(f'{sys.version_info[0]}.{sys.version_info[1]}', numpy.__version__, v.__version__); print(p)")
    try:
        out = subprocess.run([str(executable), "-c", probe], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ConfigError(f"cannot run the server's Python {executable} ({exc}); pass --python with an "
                          "interpreter that has ecm-edge installed") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"the server's Python {executable} cannot import ecm_edge and numpy ({last}); install "
                          "ecm-edge into that environment (the Python backend runs model.py there)")
    versions, _, pytriton = out.stdout.partition("\n")
    version, numpy_version, ecm_version = versions.split()
    pytriton = pytriton.strip()
    return PythonEnv(Path(executable), version, numpy_version, ecm_version, Path(pytriton) if pytriton else None)


def check_python(server: ServerBinary, env: PythonEnv) -> None:
    """The wheel's backend stub exists for that Python and works with its NumPy (module doc)."""
    if server.wheel is None:
        return
    if not (server.wheel / "tritonserver" / "python_backend_stubs" / env.version).is_dir():
        raise ConfigError(f"nvidia-pytriton has no Python backend stub for Python {env.version}; run the server's "
                          "Python backend with a Python it supports (--python)")
    if int(env.numpy.split(".")[0]) >= 2:
        raise ConfigError(f"the server's Python {env.executable} has NumPy {env.numpy}, but the Python backend stub "
                          "that nvidia-pytriton ships is built for NumPy 1.x (its outputs come back empty with NumPy "
                          "2); pass --python with an environment that has numpy<2 and ecm-edge installed, or run "
                          "NVIDIA's Triton container")


def check_repository(repository: Path) -> list[Path]:
    """The repository's ecm-edge model folders, each verified against its stamp (clear errors otherwise)."""
    repository = Path(repository)
    if not repository.is_dir():
        raise ConfigError(f"Triton repository {repository} does not exist; write one with `ecm-edge export "
                          "--checkpoint RUN --triton DIR`")
    models = stamped_models(repository)
    if not any(m.name == STREAM_MODEL for m in models):
        raise ConfigError(f"{repository} holds no {STREAM_MODEL} model written by ecm-edge; write the repository "
                          "with `ecm-edge export --checkpoint RUN --triton DIR`")
    for model in models:
        verify_model(model)
    return models


def check_ports(ports: dict[str, int]) -> None:
    """Every port free on this machine (Triton binds all interfaces); one line naming a taken one."""
    if len(set(ports.values())) != len(ports):
        raise ConfigError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                raise ConfigError(f"port {port} ({name}) is taken, perhaps by another server; choose another with "
                                  f"--{name}-port") from None


def backend_of(model: Path) -> str | None:
    """The backend a model folder's config.pbtxt needs (``python``, ``onnxruntime``, ``tensorrt``)."""
    text = (model / CONFIG_NAME).read_text()
    if found := re.search(r'^\s*backend:\s*"([^"]+)"', text, re.M):
        return found.group(1)
    if found := re.search(r'^\s*platform:\s*"([^"]+)"', text, re.M):
        return PLATFORM_BACKENDS.get(found.group(1), found.group(1))
    return None


def loadable_models(repository: Path, backends: Path | None) -> tuple[list[str], dict[str, str]]:
    """The models this server can load, and why each other one is left out."""
    load, skipped = [], {}
    for model in sorted(p for p in Path(repository).iterdir() if (p / CONFIG_NAME).is_file()):
        backend = backend_of(model)
        if backends is None or backend is None or (backends / backend).is_dir():
            load.append(model.name)
        else:
            skipped[model.name] = (f"needs Triton's {backend} backend, which this server lacks (it runs in NVIDIA's "
                                   "Triton container)")
    for name in list(load):
        called = _called_head_model(Path(repository) / name)
        if called is not None and called not in load:
            load.remove(name)
            skipped[name] = (f"runs its head in {called} (--triton-head bls), which this server cannot load: "
                             f"{skipped.get(called, 'not in the repository')}")
    return load, skipped


def _called_head_model(model: Path) -> str | None:
    """The model a ``bls`` ecm_stream calls for its head (its ``head_model`` parameter), or None."""
    found = re.search(r'key: "head_model" value: \{ string_value: "([^"]+)" \}', (model / CONFIG_NAME).read_text())
    return found.group(1) if found else None


@dataclass
class TritonServer:
    """One ``tritonserver`` process on a repository: :meth:`start`, :meth:`wait_ready`, :meth:`stop`."""

    repository: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    python: PythonEnv | None = None  # the Python backend's environment (default: this interpreter)
    server: ServerBinary | None = None
    models: Sequence[str] | None = None  # None: every model whose backend the server has
    host: str = "127.0.0.1"  # where this process reaches it
    skipped: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    _workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    def start(self) -> TritonServer:
        """Launch the server (not yet ready: :meth:`wait_ready`)."""
        self.python = self.python or inspect_python(sys.executable)
        self.server = self.server or find_server(self.python)
        check_python(self.server, self.python)
        self._workdir = Path(tempfile.mkdtemp(prefix="ecm-edge-triton-"))
        backends = self._backends()
        models, self.skipped = loadable_models(self.repository, backends)
        if self.models is not None:
            models = [m for m in models if m in self.models]
        self.log_path = self._workdir / "tritonserver.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self._command(backends, models), stdout=log_file,
                                            stderr=subprocess.STDOUT, env=self._environment(),
                                            start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, models: Sequence[str] = (STREAM_MODEL,)) -> None:
        """Wait until the server is live and ``models`` are ready; a clear error (with the log's tail) if the
        server exits, a model fails to load, or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise EcmEdgeError(self._exit_message())
            if self._get("/v2/health/live") and all(self._get(f"/v2/models/{m}/ready") for m in models):
                return
            failed = {m: why for m, why in self.model_failures().items() if m in models}
            if failed:
                raise EcmEdgeError("; ".join(f"model {m} did not load: {why}" for m, why in failed.items()))
            time.sleep(POLL_S)
        raise EcmEdgeError(f"Triton did not get ready within {timeout_s:g} s; see {self.log_path}")

    def model_failures(self) -> dict[str, str]:
        """Models the server tried and failed to load, with Triton's reason (the repository index)."""
        body = self._post("/v2/repository/index")
        if not body:
            return {}
        return {m["name"]: m.get("reason", "") for m in json.loads(body) if m.get("state") == "UNAVAILABLE"}

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGINT (Triton unloads its models and exits), then a bounded wait, then SIGKILL; returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._workdir is not None:
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)
        return code

    def kill(self) -> None:
        """End the server at once (tests of a server that dies)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------------------------------
    def _backends(self) -> Path | None:
        """The backend directory: the wheel's Python backend with the stub for this Python, in the work folder."""
        server = self.server
        if server is None or server.wheel is None:
            return server.backends if server is not None else None
        target = self._workdir / "backends" / "python"
        shutil.copytree(server.wheel / "tritonserver" / "backends" / "python", target,
                        ignore=shutil.ignore_patterns("__pycache__"))
        stub = server.wheel / "tritonserver" / "python_backend_stubs" / self.python.version / \
            "triton_python_backend_stub"
        shutil.copy2(stub, target / stub.name)
        return target.parent

    def _command(self, backends: Path | None, models: list[str]) -> list[str]:
        command = [str(self.server.path), f"--model-repository={self.repository}",
                   f"--http-port={self.ports['http']}", f"--grpc-port={self.ports['grpc']}",
                   f"--metrics-port={self.ports['metrics']}", "--model-control-mode=explicit",
                   "--exit-on-error=false", "--strict-readiness=false", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
                   # a prefix of our own: two servers on one machine must not share Python backend memory
                   f"--backend-config=python,shm-region-prefix-name=ecm_edge_{os.getpid()}_{id(self)}_"]
        command += [f"--load-model={m}" for m in models]
        if backends is not None:
            command.append(f"--backend-directory={backends}")
        return command

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.python.executable.parent}{os.pathsep}{env.get('PATH', '')}"
        if self.server.libs is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(self.server.libs))
                                                     if p)
        return env

    def _exit_message(self) -> str:
        tail = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if self.log_path else []
        if any("Address already in use" in line for line in tail):
            return (f"Triton could not bind its ports {self.ports} (in use, perhaps by another server); choose "
                    "others with --http-port, --grpc-port and --metrics-port")
        return "Triton exited while starting; the end of its log:\n" + "\n".join(tail)

    def _get(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _post(self, path: str) -> bytes | None:
        request = urllib.request.Request(self.http_url + path, data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.read()
        except (urllib.error.URLError, OSError):
            return None
