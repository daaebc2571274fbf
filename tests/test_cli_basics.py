"""The CLI shell: help, version, completion, import weight, error mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from routerllm_cli import __version__
from routerllm_cli.cli.app import app

runner = CliRunner()


def test_help_lists_all_five_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("preflight", "load", "bench", "compare", "offload"):
        assert name in result.stdout
    assert runner.invoke(app, ["-h"]).exit_code == 0
    assert "clean" in runner.invoke(app, ["offload", "--help"]).stdout


def test_no_args_shows_help():
    result = runner.invoke(app, [])
    # no command is a usage error (exit 2, as Click >= 8.2 has it), and the help it shows lists every command
    assert result.exit_code == 2 and "Usage: routerllm" in result.output
    assert all(name in result.output for name in ("preflight", "load", "bench", "compare", "offload"))


def test_every_command_help_has_an_example():
    for cmd in (["preflight"], ["load"], ["bench"], ["compare"], ["offload", "clean"]):
        out = runner.invoke(app, [*cmd, "--help"]).stdout
        assert "routerllm " + " ".join(cmd) in out, cmd


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"routerllm {__version__}"


def _sub(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_help_and_completion_do_not_import_torch():
    code = (
        "import sys\n"
        "from routerllm_cli.cli.app import app\n"
        "try:\n"
        "    app(['--help'], prog_name='routerllm')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = _sub(code)
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]
    # Shell completion runs through the same app with _ROUTERLLM_COMPLETE set.
    proc = _sub(code.replace("['--help']", "[]"), _ROUTERLLM_COMPLETE="complete_bash", COMP_WORDS="routerllm pre",
                COMP_CWORD="1")
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]
    assert "preflight" in proc.stdout


def test_show_completion_for_each_shell():
    for shell in ("bash", "zsh", "fish"):
        proc = subprocess.run([sys.executable, "-m", "routerllm_cli", "--show-completion", shell],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "_ROUTERLLM_COMPLETE" in proc.stdout or "routerllm" in proc.stdout


def test_bad_config_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  large_llm:\n    use_4bit: true\n    use_8bit: true\n")
    result = runner.invoke(app, ["offload", "clean", "--config", str(cfg), "--dry-run"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "use_4bit and use_8bit are exclusive" in lines[0]
    assert "Traceback" not in result.output


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bench: {nope: 1}\n")
    monkeypatch.setenv("ROUTERLLM_DEBUG", "1")
    result = runner.invoke(app, ["offload", "clean", "--config", str(cfg), "--dry-run"])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "ConfigError"


def test_json_goes_to_stdout_only(tmp_path):
    (tmp_path / "offload").mkdir(exist_ok=True)
    result = runner.invoke(app, ["offload", "clean", "--dry-run", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["dry_run"] is True
