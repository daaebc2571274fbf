"""scripts/test.sh sets up .venv only when it is not current; run in a copy of the repository's scripts.

Installing torch cannot happen inside a test, so setup.sh's venv and pip lines are swapped for a hand-made venv
(its `python` is this interpreter, which has pytest); every other line of the real setup.sh runs as written,
including the one that records what the venv was set up from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_repo(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    for name in ("scripts/test.sh", "scripts/setup_hash.py", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    real = (REPO / "scripts" / "setup.sh").read_text().splitlines()
    made_venv = ['mkdir -p .venv/bin && ln -sf "$PYTHON_FOR_TEST" .venv/bin/python',
                 "printf 'PATH=\"%s/.venv/bin:$PATH\"\\n' \"$PWD\" > .venv/bin/activate",
                 "echo setup >> setup.log"]
    lines = [ln for ln in real if "pip install" not in ln and "python3 -m venv" not in ln and "activate" not in ln]
    at = next(i for i, ln in enumerate(lines) if "setup_hash.py" in ln)
    (root / "scripts" / "setup.sh").write_text("\n".join(lines[:at] + made_venv + lines[at:]) + "\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_one.py").write_text("def test_one():\n    assert True\n")
    return root


def run(root: Path, *pytest_args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON_FOR_TEST": sys.executable}
    return subprocess.run(["bash", "scripts/test.sh", *(pytest_args or ["--version"])], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_test_sh_sets_up_a_fresh_clone_then_skips_until_setup_inputs_change(tmp_path):
    root = make_repo(tmp_path / "clone")
    first = run(root, "tests")  # arguments reach pytest
    assert first.returncode == 0, first.stderr[-2000:]
    assert (root / "setup.log").read_text().count("setup") == 1 and "1 passed" in first.stdout
    second = run(root)
    assert second.returncode == 0 and "not reinstalling" in second.stderr
    assert (root / "setup.log").read_text().count("setup") == 1  # current: nothing set up again
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "\n# a new dependency\n")
    third = run(root)
    assert third.returncode == 0 and (root / "setup.log").read_text().count("setup") == 2
    # setup.sh removes the stamp before it installs anything, so an interrupted setup is redone next time
    assert (REPO / "scripts" / "setup.sh").read_text().index("rm -f .venv/.routerllm-setup") < \
        (REPO / "scripts" / "setup.sh").read_text().index("pip install")
