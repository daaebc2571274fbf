"""The CLI as an operator meets it at night in an 80x24 terminal: log files, failed runs, fixes valid for the
command that shows them, errors that wrap between words, completion, did-you-mean, and what `routerllm` alone
says."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from routerllm_cli.cli.app import app
from routerllm_cli.cli.output import print_line
from routerllm_cli.config import load_settings
from routerllm_cli.errors import ConfigError

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


# --- log files --------------------------------------------------------------------------------------------------


def test_every_bench_run_folder_holds_a_run_log_and_its_path_is_printed(tiny_llama_dir, tmp_path):
    result = runner.invoke(app, ["bench", "--model", str(tiny_llama_dir), "--device", "cpu", "-n", "2",
                                 "--max-new-tokens", "6", "--skip-execution", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run_dir = next(tmp_path.iterdir())
    log = run_dir / "run.log"
    assert f"log: {log}" in result.stderr  # printed at the start, before generation
    assert result.stderr.index("log:") < result.stderr.index("generating")
    text = log.read_text()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text)  # timestamped lines
    assert f"run folder: {run_dir}" in text  # what the screen said
    assert "generating: batch size" in text and "finished: 2/2 answers" in text
    assert text.count("generating: batch size") == 1  # the screen's line, not written twice


def test_preflight_and_load_write_to_the_logs_folder(tiny_llama_dir, tmp_path):
    result = runner.invoke(app, ["preflight"])
    assert result.exit_code == 0, result.output
    logs = sorted(Path("logs").glob("preflight-*.log"))
    assert len(logs) == 1 and f"log: {logs[0]}" in result.stderr
    assert "verdict: GO" in logs[0].read_text()
    elsewhere = tmp_path / "elsewhere"
    os.environ["ROUTERLLM_LOGS_DIR"] = str(elsewhere)  # configurable (the fixture clears ROUTERLLM_* again)
    try:
        result = runner.invoke(app, ["load", "--model", str(tiny_llama_dir), "--max-new-tokens", "4"])
    finally:
        del os.environ["ROUTERLLM_LOGS_DIR"]
    assert result.exit_code == 0, result.output
    [log] = list(elsewhere.glob("load-*.log"))
    assert f"log: {log}" in result.stderr and "Test generation" in log.read_text()


def test_a_crash_leaves_its_traceback_in_run_log_and_the_run_marked_failed(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    shard = sorted(broken.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn download
    result = runner.invoke(app, ["bench", "--model", str(broken), "--device", "cpu", "-n", "1", "--skip-execution",
                                 "--results-dir", str(tmp_path / "res")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    run_dir = next((tmp_path / "res").iterdir())
    assert "Traceback (most recent call last)" in (run_dir / "run.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


# --- a bench no-go ----------------------------------------------------------------------------------------------


def test_a_bench_no_go_names_fixes_bench_can_take_and_marks_the_run_failed(tmp_path):
    result = runner.invoke(app, ["bench", "--model", "codellama_70b", "-n", "2", "--device", "cpu",
                                 "--results-dir", str(tmp_path)])  # 138 GB of weights, this machine's RAM
    assert result.exit_code == 1, result.output
    line = flat(result.stderr)
    assert "no-go" in line and "raise cpu to" in line
    # every what-if flag comes as a preflight command, never as a bench option
    assert re.findall(r"--assume-\w+", line) and not re.search(r"(?<!routerllm preflight )--assume-", line), line
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no-go" in summary["error"] and summary["done"] == 0
    assert "no-go" in (run_dir / "run.log").read_text()


# --- one-line errors in a terminal --------------------------------------------------------------------------


def test_a_long_error_wraps_between_words_and_keeps_the_resume_path_whole():
    run_dir = "results/smollm2_135m-20261201-232653-" + "x" * 60  # longer than a row by itself
    words = (f"interrupted: 2/4 examples saved in {run_dir} - fix: resume with `routerllm bench --run-dir {run_dir}`"
             " and the GPUs keep their budgets")
    buf = io.StringIO()
    print_line(Console(file=buf, width=80, force_terminal=True, color_system=None), f"error: {words}")
    rows = buf.getvalue().splitlines()
    assert len(rows) > 1 and all(len(r) <= 80 for r in rows if run_dir not in r)
    assert [w for r in rows for w in r.split()] == ["error:", *words.split()]  # no word split, none lost
    assert any(r.strip() == f"{run_dir}`" or r.strip().startswith(run_dir) for r in rows)
    piped = io.StringIO()
    print_line(Console(file=piped, width=80, color_system=None), f"error: {words}")
    assert piped.getvalue().count("\n") == 1  # into a pipe: one line, for grep


# --- routerllm alone, completion, did-you-mean ------------------------------------------------------------


def test_routerllm_alone_shows_the_help_and_says_why_it_exits_2():
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "preflight" in result.stdout and "bench" in result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no command given" in lines[0] and "routerllm bench" in lines[0]


def _complete(words: str, cwd: Path) -> tuple[list[str], str]:
    code = ("import sys\nfrom routerllm_cli.cli.app import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n")
    env = {**os.environ, "_ROUTERLLM_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    return proc.stdout.split(), proc.stderr


def test_model_completion_offers_catalog_names_model_folders_and_gguf_files(tmp_path, tiny_llama_dir):
    (tmp_path / "models").mkdir()
    shutil.copytree(tiny_llama_dir, tmp_path / "models" / "tiny")
    (tmp_path / "models" / "q.gguf").write_bytes(b"GGUF")
    (tmp_path / "models" / "notes.txt").write_text("not a model")
    found, err = _complete("routerllm bench --model sm", tmp_path)
    assert found == ["smollm2_135m"] and "HEAVY []" in err
    found, _ = _complete("routerllm preflight --model code", tmp_path)
    assert found == ["codellama_34b", "codellama_70b", "codellama_7b"]
    found, _ = _complete("routerllm load --model models/", tmp_path)
    assert found == ["models/q.gguf", "models/tiny"]
    found, _ = _complete("routerllm bench --model mo", tmp_path)
    assert found == ["models"]  # a folder holding a .gguf is a model itself
    (tmp_path / "models" / "q.gguf").unlink()
    found, _ = _complete("routerllm bench --model mo", tmp_path)
    assert found == ["models/"]  # a plain folder: complete into it


def test_an_unknown_catalog_name_gets_a_did_you_mean():
    result = runner.invoke(app, ["preflight", "--model", "llama3-450b"])
    assert result.exit_code == 2 and "did you mean llama3_405b?" in flat(result.stderr)


@pytest.mark.parametrize("yaml_text,suggested", [
    ("bench:\n  num_exampels: 3\n", "bench.num_examples"),
    ("models:\n  large_llm:\n    use_4bti: true\n", "models.large_llm.use_4bit"),
    ("models:\n  router:\n    pool:\n      - name: smollm2_135m\n        torch_dtyp: float32\n",
     "models.router.pool.0.torch_dtype"),
])
def test_an_unknown_yaml_key_gets_a_did_you_mean(tmp_path, yaml_text, suggested):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    line = info.value.one_line()
    assert f"did you mean {suggested!r}?" in line and f"rename it to {suggested.rsplit('.', 1)[1]}" in line


def test_a_key_with_no_near_name_keeps_the_plain_message(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("energy:\n  zzzz: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "did you mean" not in info.value.one_line() and "unknown key 'energy.zzzz'" in info.value.one_line()


# --- the hub check ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_network_error_on_the_hub_check_is_not_told_to_accept_a_license(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connection refused, a real network error
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    proc = subprocess.run([sys.executable, "-m", "routerllm_cli", "preflight", "--model", "codellama_70b",
                           "--assume-gpus", "2x80GB", "--json"], capture_output=True, text=True, env=env, timeout=120)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    hub = checks["hub_access"]
    assert hub["status"] == "warn" and "license" not in (hub["fix"] or "")
    assert "network" in hub["fix"] and "HF_HUB_OFFLINE=1" in hub["fix"]


# --- preflight in 80x24 ------------------------------------------------------------------------------------


def _preflight_screen(*args: str) -> list[str]:
    env = {**os.environ, "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.run([sys.executable, "-m", "routerllm_cli", "preflight", *args], capture_output=True,
                          text=True, env=env, timeout=120)
    return (proc.stderr + proc.stdout).splitlines()


@pytest.mark.slow
def test_preflight_fits_an_80x24_pane_with_the_verdict_and_fixes_last():
    lines = _preflight_screen("--config", str(Path(__file__).parents[1] / "configs" / "laptop_cpu.yaml"))
    assert len(lines) <= 23 and lines[-1].startswith("verdict: GO")  # 23 rows + the prompt
    assert all(len(ln) <= 80 for ln in lines)
    nogo = _preflight_screen("--model", "llama3_405b", "--assume-gpus", "2x80GB", "--assume-cpu", "256GB")
    last = nogo[-23:]
    start = next(i for i, ln in enumerate(last) if ln.startswith("verdict: NO-GO"))
    fixes = [ln for ln in last[start:] if ln.strip().startswith("fix:")]
    assert len(fixes) >= 4 and "fix: use codellama_70b" in flat(" ".join(last[start:]))
    verbose = _preflight_screen("-v", "--model", "llama3_405b", "--assume-gpus", "2x80GB", "--assume-cpu", "256GB")
    assert any("transformers" in ln for ln in verbose) and not any("transformers" in ln for ln in nogo)
    assert any("KV cache:" in ln for ln in verbose) and verbose[-1] == nogo[-1]


# --- packaging ----------------------------------------------------------------------------------------------


def test_the_package_metadata_builds_without_setuptools_deprecations(tmp_path):
    root = Path(__file__).parents[1]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / name)
    shutil.copytree(root / "routerllm_cli", tmp_path / "routerllm_cli")
    code = ("import sys, tempfile\nfrom setuptools import build_meta\nd = tempfile.mkdtemp()\n"
            "name = build_meta.prepare_metadata_for_build_wheel(d)\nprint(open(f'{d}/{name}/METADATA').read())\n")
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "License-Expression: Apache-2.0" in proc.stdout
    assert "Deprecat" not in proc.stderr, proc.stderr[-2000:]


# --- the load progress line ---------------------------------------------------------------------------------


def test_the_load_line_moves_through_a_gguf_load_or_says_it_cannot_count():
    """The events a real GGUF load of SmolLM2 sends, in order: before, the bar sat at 0.0/98.4 MB throughout."""
    from routerllm_cli.cli.load import LoadProgress
    from routerllm_cli.cli.output import Output

    def line(bar: LoadProgress) -> str:
        buf = io.StringIO()
        Console(file=buf, width=80, color_system=None).print(bar.progress.make_tasks_table(bar.progress.tasks))
        return flat(buf.getvalue())

    with LoadProgress(Output()) as bar:
        bar.update({"stage": "checkpoint", "bytes_total": 98_362_432, "shards_total": 1})
        assert "loading the tokenizer" in line(bar) and "98.4 MB of weights" in line(bar)
        assert "0.0/98.4" not in line(bar) and bar.progress.tasks[0].total is None  # pulsing, not a frozen 0
        bar.update({"stage": "tokenizer", "message": "TokenizersBackend"})
        assert "reading the weights" in line(bar) and bar.progress.tasks[0].total is None
        bar.update({"stage": "prepare", "message": "Converting and de-quantizing GGUF tensors", "done": 104,
                    "total": 272})
        assert "de-quantizing GGUF tensors" in line(bar) and "104/272" in line(bar)
        assert bar.progress.tasks[0].percentage == pytest.approx(100 * 104 / 272)
        bar.update({"stage": "weights", "bytes_done": 49_181_216, "bytes_total": 98_362_432})
        assert "49.2/98.4 MB" in line(bar) and bar.progress.tasks[0].percentage == pytest.approx(50.0)
        assert re.search(r"\d:\d\d:\d\d", line(bar))  # the elapsed time is always there
