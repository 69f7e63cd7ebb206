"""``ecm-edge serve REPOSITORY``: run NVIDIA Triton Inference Server on a repository of ``ecm-edge export --triton``.

The server is ``tritonserver`` from PATH (NVIDIA's container) or the one the ``nvidia-pytriton`` wheel ships
(``ecm_edge.serving``). The command checks the repository's stamps and the ports, starts the server, waits until
the ``ecm_stream`` model is ready, prints where it listens and runs until Ctrl-C (or SIGTERM), which it forwards
as SIGINT; a server that does not stop within the grace is killed.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from ecm_edge.cli.main import info
from ecm_edge.errors import EcmEdgeError

WAIT_POLL_S = 0.5  # how often the command looks whether the server is still running


@click.command()
@click.argument("repository", type=click.Path(file_okay=False, path_type=Path))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True,
              help="Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--python", "python", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The Python the server's Python backend runs (its environment needs ecm-edge; with the "
                   "nvidia-pytriton server also numpy<2). Default: this one.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the server and its models to get ready.")
def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int, python: Path | None,
          timeout_s: float) -> None:
    """Serve a Triton model repository (ecm-edge export --triton DIR) until Ctrl-C.

    \b
    Examples:
      ecm-edge serve runs/triton
      ecm-edge serve runs/triton --http-port 9000 --grpc-port 9001 --metrics-port 9002
      ecm-edge stream --triton grpc://localhost:8001 --camera 0      # from another shell or machine
    """
    from ecm_edge.serving import TritonServer, check_ports, check_repository, find_server, inspect_python

    models = check_repository(repository)
    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    check_ports(ports)
    env = inspect_python(python or sys.executable)
    server = TritonServer(repository, ports, python=env, server=find_server(env))
    server.start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.wait_ready(timeout_s)
        info(f"serving {repository} ({', '.join(m.name for m in models)}) with {server.server.path}")
        for name, why in server.skipped.items():
            info(f"  {name}: not loaded: {why}")
        info(f"  HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}  (all interfaces)")
        info(f"  log: {server.log_path}; stop with Ctrl-C")
        info(f"next: ecm-edge stream --triton {server.grpc_url} --camera 0")
        while not stop.wait(WAIT_POLL_S):
            if server.process.poll() is not None:
                raise EcmEdgeError(f"Triton exited with code {server.process.returncode}; see {server.log_path}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        code = server.stop()
    info(f"Triton stopped (exit code {code})")
