"""The README's first screen and .ci/run must stay true to each other."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _first_screen_commands():
    text = (REPO / "README.md").read_text()
    first_screen = "\n".join(text.splitlines()[:40])
    return re.findall(r"^    (python3 -m venv .*)$", first_screen, re.M)


def test_readme_first_screen_has_exactly_two_setup_commands():
    cmds = _first_screen_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("emtl-stream demo"), cmds[0]
    assert "pytest" in cmds[1], cmds[1]


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = _first_screen_commands()[1]
    ci_lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert test_cmd in ci_lines, f".ci/run does not run the README's test command {test_cmd!r}"


def test_readme_cites_the_data_set():
    text = (REPO / "README.md").read_text()
    assert "doi:10.1186/s12984-024-01355-4" in text
