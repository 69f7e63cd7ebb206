"""``ecm-edge checks``: what this installation can do."""

from __future__ import annotations

import json

import click

from ecm_edge.environment import environment_report
from ecm_edge.version import __version__


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def checks(as_json: bool) -> None:
    """Show the versions of ecm-edge and its components, visible GPUs, and whether the CUDA simulator is on."""
    report = {"ecm-edge": __version__, **environment_report()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    width = max(map(len, report))
    for key, value in report.items():
        click.echo(f"{key:<{width}}  {value}")
