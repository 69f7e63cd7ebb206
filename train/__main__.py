"""``python -m ecm_edge.train``: one training process; the entry point torchrun runs in every process::

    torchrun --nproc_per_node 2 -m ecm_edge.train --config small --data data/small

``ecm-edge train --nproc N`` launches exactly this (``ecm_edge.cli.train.launch_command``). It takes the options
of ``ecm-edge train`` that a process needs and runs the trainer (:mod:`ecm_edge.train.worker`) without the CLI,
which sits above this package. Exit codes: 0 success, 1 a runtime error (one line; ``--debug`` shows the
traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ecm_edge.errors import EcmEdgeError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ecm_edge.train", description="One ECM training process "
                                "(what torchrun runs; `ecm-edge train` has the same options and more).")
    p.add_argument("--config", dest="config_name", default="thumos14", metavar="NAME|PATH",
                   help="shipped config name or YAML path (default: thumos14; ignored with --resume)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR", help="dataset folder (optional with --resume)")
    p.add_argument("--name", default=None, help="run name: PROJECT/train/NAME (auto-incremented)")
    p.add_argument("--project", default="runs", help="folder that holds train/<name> (default: runs)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    return p


def main(argv: list[str] | None = None) -> int:
    options = parser()
    args = options.parse_args(argv)
    if args.data is None and not args.resume:
        options.error("--data DIR is required (the dataset folder to train on)")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("ecm_edge")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if args.debug else logging.INFO)
    logger.propagate = False
    try:
        from ecm_edge.train.worker import resolve_run, train_process

        cfg, data_dir, run_dir = resolve_run(args.config_name, args.overrides, args.data, args.project,
                                             args.resume, args.run_dir)
        summary = train_process(cfg, data_dir, project=args.project, name=args.name, run_dir=run_dir,
                                device=args.device, resume=bool(args.resume), progress=args.progress)
    except EcmEdgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if summary is not None and summary.already_finished:
        print(f"{summary.run_dir} already finished all {summary.epochs} epochs; nothing to do")
    elif summary is not None:
        print(f"run written to {summary.run_dir}: {', '.join(sorted(summary.files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
