"""``ecm-edge bench``: the report and the README section generated from it."""

from __future__ import annotations

import subprocess
import sys

from ecm_edge.cli.bench import README_END, README_START


def test_bench_part_writes_the_report_and_regenerates_the_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n## Performance\n{README_START}\nstale numbers\n{README_END}\n\n## After\n")
    report = tmp_path / "report.md"
    result = subprocess.run([sys.executable, "-m", "ecm_edge", "bench", "eval", "--quick", "-o", str(report),
                             "--readme", str(readme)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "stale numbers" not in text
    assert text.startswith("# Project\n\n## Performance\n") and text.rstrip().endswith("## After")
    generated = text[text.index(README_START):text.index(README_END)]
    assert "#### Environment" in generated and "| date |" in generated and "cores" in generated
    assert "#### Evaluation" in generated and "speedup" in generated
    assert "### Evaluation" in report.read_text()


def test_bench_refuses_a_readme_without_markers_and_unknown_parts(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    unknown = subprocess.run([sys.executable, "-m", "ecm_edge", "bench", "nope"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown benchmark part 'nope'" in unknown.stderr
    missing = subprocess.run([sys.executable, "-m", "ecm_edge", "bench", "eval", "--quick", "--readme", str(readme)],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "markers" in missing.stderr
    assert readme.read_text() == "# Project\n"
