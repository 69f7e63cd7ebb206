"""``ecm-edge checks``: what this installation can do, and which precision runs the head here."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ecm_edge.environment import environment_report
from ecm_edge.version import __version__


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="An `ecm-edge export` folder: say which of its precisions `auto` runs here, and why.")
def checks(as_json: bool, artifacts: Path | None) -> None:
    """Show the versions of ecm-edge and its components, visible GPUs, whether the CUDA simulator is on, the CPU's
    int8 instructions, and what each precision (fp32, fp16, int8, auto) would run on here."""
    from ecm_edge.runtime.engines import precision_report

    report = {"ecm-edge": __version__, **environment_report()}
    report |= {f"precision {name}": line for name, line in precision_report(artifacts).items()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    width = max(map(len, report))
    for key, value in report.items():
        click.echo(f"{key:<{width}}  {value}")
