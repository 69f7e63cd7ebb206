"""``ecm-edge bench``: one markdown report over all benchmark parts (or the ones named)."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
from pathlib import Path

import click

from ecm_edge.bench import PARTS, BenchSection
from ecm_edge.cli.main import info
from ecm_edge.environment import environment_report
from ecm_edge.errors import EcmEdgeError
from ecm_edge.io import atomic_write_text

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


@click.command(epilog=f"Parts: {', '.join(PARTS) or '(none registered)'}.")
@click.argument("parts", nargs=-1)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the markdown report here (default: print it only).")
@click.option("--quick", is_flag=True, help="Smaller inputs and fewer repeats (smoke run).")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"Also replace the part of this markdown file between {README_START!r} and {README_END!r}.")
def bench(parts: tuple[str, ...], output: Path | None, quick: bool, readme: Path | None) -> None:
    """Run benchmark PARTS (default: all) and print a markdown report.

    Each part measures a component against a baseline in the same run (speedups, not absolute targets).
    """
    names = list(parts) or list(PARTS)
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        raise click.UsageError(f"unknown benchmark part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    sections = [environment_section()]
    for name in names:
        module, function = PARTS[name]
        info(f"bench {name} ...")
        try:
            section: BenchSection = getattr(importlib.import_module(module), function)(quick=quick)
        except EcmEdgeError as exc:
            section = BenchSection(name, ["status"], [[f"skipped: {exc}"]])
        sections.append(section)
    report = render_report(sections)
    click.echo(report)
    if output is not None:
        atomic_write_text(output, report)
        info(f"report written to {output}")
    if readme is not None:
        atomic_write_text(readme, replace_generated_section(readme.read_text(), report, str(readme)))
        info(f"performance section of {readme} regenerated")


def replace_generated_section(text: str, report: str, where: str) -> str:
    """``text`` with everything between the bench markers replaced by the report (headings demoted one level)."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise EcmEdgeError(f"{where} has no {README_START} ... {README_END} markers to put the report between")
    body = report.split("\n", 1)[1].replace("\n### ", "\n#### ").lstrip("\n")
    return text[: start + len(README_START)] + "\n" + body + text[end:]


def environment_section() -> BenchSection:
    env = environment_report()
    rows = [["date", datetime.date.today().isoformat()],
            ["machine", f"{platform.machine()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB memory"]]
    rows += [[k, v] for k, v in env.items()]
    return BenchSection("Environment", ["item", "value"], rows)


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def render_report(sections: list[BenchSection]) -> str:
    return "# ecm-edge benchmark report\n\n" + "\n".join(s.to_markdown() for s in sections)
