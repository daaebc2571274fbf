"""Bad input a hostile tester tried: each gets one line on stderr naming the fix and exit 2, or simply works."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli.app import app

runner = CliRunner()


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and " - fix: " in lines[0], result.stderr
    assert result.stderr.rstrip().endswith(lines[0]), result.stderr
    assert "Traceback" not in result.output and "unexpected" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("yaml_text, needle", [
    ("bench:\n  timeout_s: .inf\n", "timeout_s"),
    ("bench:\n  timeout_s: .nan\n", "timeout_s"),
    ("bench:\n  timeout_s: 1.0e+400\n", "timeout_s"),
    ("bench:\n  batch_size: -4\n", "batch_size"),
    ("bench:\n  batch_size: 0\n", "batch_size"),
    ("bench:\n  samples: 1000000000\n  temperature: 0.8\n", "samples"),
    ("models:\n  large_llm:\n    max_memory: {cpu: .inf}\n", "max_memory[cpu]"),
    ("models:\n  large_llm:\n    max_memory: {cpu: 1.0e+400}\n", "max_memory[cpu]"),
    ("models:\n  large_llm:\n    max_memory: {0: '1e999GB'}\n", "max_memory[0]"),
    ("models:\n  large_llm:\n    max_memory: {cpu: " + "9" * 400 + ".5GB}\n", "too large"),
])
def test_bad_config_values(tmp_path: Path, yaml_text: str, needle: str) -> None:
    config = write(tmp_path / "c.yaml", yaml_text)
    for command in (["bench", "-n", "1"], ["preflight"]):
        one_line_error(runner.invoke(app, [*command, "--config", str(config)]), needle)


def test_bad_flags() -> None:
    one_line_error(runner.invoke(app, ["bench", "--samples", "1000000000", "--temperature", "0.8"]), "samples")
    one_line_error(runner.invoke(app, ["bench", "--timeout", "inf"]), "timeout_s")
    one_line_error(runner.invoke(app, ["bench", "--batch-size", "-4"]), "batch-size")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\xfd", b"bench:\n  seed: \xff\xfe\n"])
def test_a_binary_config_file(tmp_path: Path, content: bytes) -> None:
    config = write(tmp_path / "c.yaml", content)
    one_line_error(runner.invoke(app, ["preflight", "--config", str(config)]), "not UTF-8", "--config")


def test_run_dir_on_a_file(tmp_path: Path) -> None:
    target = write(tmp_path / "notes.txt", "mine")
    one_line_error(runner.invoke(app, ["bench", "-n", "1", "--run-dir", str(target)]), "is a file", "--run-dir")
    assert target.read_text() == "mine"


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real small or read-only file system (needs root: mount); skips where it cannot be made."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_results_folder(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as results:
        line = one_line_error(runner.invoke(app, ["bench", "-n", "1", "--results-dir", str(results)]),
                              "Read-only file system")
        assert "results_dir" in line and "offload_folder" not in line


def test_a_full_results_disk_names_the_results_folder_not_offload(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "size=64k") as results:
        with contextlib.suppress(OSError), open(results / "filler", "wb") as f:
            while f.write(b"\0" * 4096):
                f.flush()
        line = one_line_error(runner.invoke(app, ["bench", "-n", "1", "--results-dir", str(results)]), "disk full")
        assert "results_dir" in line and "offload_folder" not in line


def test_disk_full_during_a_load_names_the_offload_folder_only_when_it_was_there(tmp_path: Path) -> None:
    from routerllm_cli.loading.failures import translate_load_error

    class Plan:
        class model:
            source = "some/model"

    full = OSError(28, "No space left on device")
    full.filename = str(tmp_path / "hf" / "blob")
    assert "offload_folder" not in translate_load_error(full, Plan, tmp_path / "offload").one_line()
    full.filename = str(tmp_path / "offload" / "w.dat")
    assert "offload_folder" in translate_load_error(full, Plan, tmp_path / "offload").one_line()


# -- corrupt run files: resuming a run whose files a crash or a hand damaged --------------------------------

@pytest.fixture
def finished_run(tiny_llama_dir: Path, tmp_path: Path) -> tuple[list[str], Path]:
    args = ["bench", "--model", str(tiny_llama_dir), "-n", "2", "--max-new-tokens", "4", "--skip-execution",
            "--device", "cpu", "--batch-size", "2", "--run-dir", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return args, tmp_path / "run"


@pytest.mark.slow  # a routerllm process end to end
def test_a_null_line_and_a_sample_without_seconds_are_read_around(finished_run) -> None:
    args, run = finished_run
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        s.pop("seconds"), s.pop("latency_s")
    (run / "samples.jsonl").write_text("null\n" + "\n".join(json.dumps(s) for s in samples) + "\n7\n[1]\n")
    (run / "summary.json").write_text('{"done": 2, "stat')  # truncated: derived, so recomputed
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 2 and summary["status"] == "finished" and summary["latency_s"]["mean"] == 0.0


@pytest.mark.slow  # a routerllm process end to end
def test_a_truncated_run_json_is_a_one_line_error(finished_run) -> None:
    args, run = finished_run
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    line = one_line_error(runner.invoke(app, args), "run.json", "damaged")
    assert "samples.jsonl is intact" in line
    assert (run / "samples.jsonl").stat().st_size > 0  # nothing was lost
