"""bench and compare through a real OpenAI-compatible server (transformers' own, on 127.0.0.1): the same answers
as a local bench, a killed server resumed without loss or repeat, the one-line errors, and the key kept secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.bench import run_bench
from routerllm_cli.cli.app import app
from routerllm_cli.config import load_settings
from routerllm_cli.endpoints.client import EndpointUnavailable

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_CHAT_TEMPLATE, write_tiny_llama  # noqa: E402
from openai_server import OpenAIServer, free_port  # noqa: E402

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
# HumanEval prompts run to ~350 tokens of the tiny tokenizer: room for them and the answer
TINY_POSITIONS = 1024
BASE = {"prompt_style": "base", "skip_execution": True, "device": "cpu"}


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("served") / "tiny-llama", max_position_embeddings=TINY_POSITIONS)


@pytest.fixture(scope="module")
def tiny_server(tiny_dir, tmp_path_factory):
    server = OpenAIServer(tiny_dir, tmp_path_factory.mktemp("logs") / "serve.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_only_server(tmp_path_factory):
    """The same server without its /v1/completions route and behind a key, serving a tiny chat model."""
    model = write_tiny_llama(tmp_path_factory.mktemp("served_chat") / "tiny-chat", chat_template=TINY_CHAT_TEMPLATE,
                             max_position_embeddings=TINY_POSITIONS)
    os.environ["ROUTERLLM_TEST_SERVER_KEY"] = "sk-test-9f3e1c7a55d24b0e"  # the server's copy, read at its start
    try:
        server = OpenAIServer(model, tmp_path_factory.mktemp("logs") / "chat.log", no_completions=True,
                              api_key_env="ROUTERLLM_TEST_SERVER_KEY").start()
    finally:
        os.environ.pop("ROUTERLLM_TEST_SERVER_KEY")
    yield server
    server.stop()


def endpoint_model(server: OpenAIServer, served: str | None = None) -> str:
    return f"openai:{server.url}#{served or server.models()[0]}"


def endpoint_settings(server, results: Path, *, endpoint: dict | None = None, served: str | None = None, **bench):
    return load_settings(None, {
        "models": {"large_llm": {"name": endpoint_model(server, served), "endpoint": endpoint or {}}},
        "bench": {"results_dir": str(results), **BASE, **bench}})


# --- the same answers as a local run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_endpoint_bench_gives_the_answers_of_a_local_bench(tiny_server, tiny_dir, tmp_path):
    """Greedy, float32, base prompts: every saved field that depends on the model is the same whether routerllm
    ran the model (in batches of 8) or sent the prompts to a server (4 at a time, one by one there)."""
    bench = {"num_examples": 8, "max_new_tokens": 24}
    remote = run_bench(endpoint_settings(tiny_server, tmp_path / "r", endpoint={"concurrency": 4}, **bench))
    local = run_bench(load_settings(None, {"models": {"large_llm": {"name": str(tiny_dir), "torch_dtype": "float32"}},
                                           "bench": {"results_dir": str(tmp_path / "l"), **BASE, **bench}}))
    by_task = {s["task_id"]: s for s in local.samples}
    assert len(remote.samples) == len(local.samples) == 8
    for s in remote.samples:
        mine = by_task[s["task_id"]]
        for key in ("raw", "completion", "new_tokens", "prompt_tokens", "prompt_style", "stopped_by"):
            assert s[key] == mine[key], (s["task_id"], key)
    assert {s["batch_size"] for s in remote.samples} <= {1, 2, 3, 4}  # requests in flight, never more than asked
    summary = remote.summary
    assert summary["status"] == "finished" and summary["done"] == 8 and summary["load_seconds"] == 0.0
    assert summary["energy_measured"] is False and "energy" not in summary and "not measured" in summary["energy_note"]
    assert summary["cost_usd"] is None and "no price" in summary["cost_basis"]
    assert json.loads((remote.run_dir / "run.json").read_text())["fingerprint"]["source"] == "endpoint"


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory, smollm2_fp32):
    """SmolLM2 (the embedded model) dequantized to float32 and saved once, behind the server."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    dequantized, tok = smollm2_fp32
    saved = tmp_path_factory.mktemp("smollm2") / "smollm2"
    config = copy.deepcopy(dequantized.config)  # the session's model is shared: its own config stays as it is
    config.__dict__.pop("quantization_config", None)  # the weights are float32 now; a GGUF model refuses to save
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(dequantized.state_dict())
    plain.save_pretrained(saved)
    tok.save_pretrained(saved)
    server = OpenAIServer(saved, saved.parent / "serve.log").start()
    yield server, saved
    server.stop()


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("style, tokens, tasks", [("base", 64, [0, 2, 4, 7]), ("instruct", 128, [0, 2])])
def test_a_real_model_through_the_endpoint_answers_as_it_does_locally(smollm2_server, tmp_path, style, tokens,
                                                                      tasks):
    """Base answers that end on a stop sequence are cut at the same place; instruct answers are the same once cut
    after the first closed fence, where a local run stops generating. What differs, and why: the server cannot
    stop at a closed fence, so it generates past it, and its completion_tokens count those tokens too."""
    server, saved = smollm2_server
    bench = {"task_ids": [f"HumanEval/{t}" for t in tasks], "max_new_tokens": tokens, "prompt_style": style}
    remote = run_bench(endpoint_settings(server, tmp_path / "r", **bench))
    local = run_bench(load_settings(None, {"models": {"large_llm": {"name": str(saved), "torch_dtype": "float32"}},
                                           "bench": {"results_dir": str(tmp_path / "l"), **BASE, **bench}}))
    mine = {s["task_id"]: s for s in local.samples}
    for s in remote.samples:
        assert (s["raw"], s["completion"]) == (mine[s["task_id"]]["raw"], mine[s["task_id"]]["completion"])
        assert s["stopped_by"] == mine[s["task_id"]]["stopped_by"]
        if s["stopped_by"] == "stop_when":
            assert s["new_tokens"] >= mine[s["task_id"]]["new_tokens"]  # generated past the fence
        else:
            assert s["new_tokens"] == mine[s["task_id"]]["new_tokens"]
    assert any(s["stopped_by"] == ("stop_sequence" if style == "base" else "stop_when") for s in remote.samples)


# --- a server that dies -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_server_then_restart_and_resume_loses_and_repeats_nothing(tiny_dir, tmp_path):
    server = OpenAIServer(tiny_dir, tmp_path / "serve.log").start()
    config = tmp_path / "endpoint.yaml"
    config.write_text(json.dumps({"models": {"large_llm": {
        "name": endpoint_model(server), "endpoint": {"concurrency": 2, "max_retries": 1, "timeout_s": 60}}},
        "bench": {"num_examples": 10, "max_new_tokens": 200, **BASE}}))  # long enough to kill it mid-run
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "routerllm_cli", "bench", "--config", str(config), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        bench = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples = run_dir / "samples.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and bench.poll() is None:
            if samples.exists() and len(read_lines(samples)) >= 3:
                break
            time.sleep(0.1)
        assert bench.poll() is None, bench.communicate()
        server.kill()  # a crash: no goodbye to the requests in flight
        _, err = bench.communicate(timeout=120)
        assert bench.returncode == 1, err
        line = err.strip().splitlines()[-1]
        assert "stopped answering" in line and f"--run-dir {run_dir}" in line and "Traceback" not in err
        before = samples.read_bytes()
        assert len(read_lines(samples)) >= 3
        assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"

        server.start()  # the same port: the run's URL works again
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        after = samples.read_bytes()
        assert after.startswith(before)  # what was saved stays as it was
        ids = [s["task_id"] for s in read_lines(samples)]
        assert sorted(ids) == sorted(f"HumanEval/{i}" for i in range(10)) and len(ids) == 10  # none lost or twice
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "finished" and len(info["resumed"]) == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_a_server_gone_mid_run_raises_after_its_retries_and_keeps_the_answers(tiny_dir, tmp_path):
    server = OpenAIServer(tiny_dir, tmp_path / "serve.log").start()
    # answers long enough (a second or so each) that the kill lands while the next one is in flight
    settings = endpoint_settings(server, tmp_path / "res", endpoint={"concurrency": 1, "max_retries": 2},
                                 num_examples=5, max_new_tokens=256)

    def on_event(kind, data):
        if kind == "batch" and data["done"] == 2:
            server.kill()

    try:
        with pytest.raises(EndpointUnavailable) as info:
            run_bench(settings, run_dir=tmp_path / "run", on_event=on_event)
    finally:
        server.stop()
    assert info.value.exit_code == 1 and "3 attempts" in info.value.message  # the first try and 2 retries
    assert 2 <= len(read_lines(tmp_path / "run" / "samples.jsonl")) < 5
    assert "--run-dir" in info.value.fix
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_stop_request_lets_the_requests_in_flight_land_and_the_run_resumes(tiny_server, tmp_path):
    from routerllm_cli.bench import BenchInterrupted, StopSignal

    settings = endpoint_settings(tiny_server, tmp_path / "res", endpoint={"concurrency": 2}, num_examples=6,
                                 max_new_tokens=16)
    stop = StopSignal()

    def on_event(kind, data):
        if kind == "batch" and data["done"] >= 2:
            stop.request()  # what the first Ctrl-C does

    with pytest.raises(BenchInterrupted) as info:
        run_bench(settings, run_dir=tmp_path / "run", stop=stop, on_event=on_event)
    assert info.value.exit_code == 130
    first = read_lines(tmp_path / "run" / "samples.jsonl")
    assert 2 <= len(first) <= 2 + 2  # those in flight (at most the concurrency) landed; no new request went out
    run_bench(settings, run_dir=tmp_path / "run")
    ids = [s["task_id"] for s in read_lines(tmp_path / "run" / "samples.jsonl")]
    assert sorted(ids) == sorted(f"HumanEval/{i}" for i in range(6))


# --- one-line errors --------------------------------------------------------------------------------------------


def bench_cli(*args: str):
    return runner.invoke(app, ["bench", "--prompt-style", "base", "--skip-execution", "-n", "2",
                               "--max-new-tokens", "4", *args])


def test_a_refused_connection_is_one_line_naming_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result = bench_cli("--model", f"openai:{url}#some/model")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0] and url in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_wrong_path_is_not_an_api_base(tiny_server):
    result = bench_cli("--model", f"openai:{tiny_server.url[:-3]}/v2#x")
    assert result.exit_code == 2
    assert "not an OpenAI-compatible API base" in result.stderr and "fix:" in result.stderr


@pytest.mark.slow
def test_an_unknown_model_names_what_the_server_lists(tiny_server, tiny_dir):
    result = bench_cli("--model", endpoint_model(tiny_server, "meta-llama/Llama-3.1-405B-Instruct"))
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "does not serve 'meta-llama/Llama-3.1-405B-Instruct'" in line and str(tiny_dir) in line


@pytest.mark.slow
def test_a_missing_completions_route_suggests_instruct_and_instruct_works(chat_only_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_VLLM_KEY", "sk-test-9f3e1c7a55d24b0e")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"models": {"large_llm": {"name": "openai:http://127.0.0.1:1/v1#m",
                                                            "endpoint": {"api_key_env": "MY_VLLM_KEY"}}}}))
    model = ["--config", str(config), "--model", f"openai:{chat_only_server.url}#{_chat_model(chat_only_server)}"]
    base = bench_cli(*model, "--json")
    assert base.exit_code == 2, base.output
    assert "has no /completions route (HTTP 404)" in base.stderr and "prompt_style: instruct" in base.stderr
    ok = runner.invoke(app, ["bench", *model, "--prompt-style", "instruct", "--skip-execution", "-n", "2",
                             "--max-new-tokens", "6", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["done"] == 2


def _chat_model(server: OpenAIServer) -> str:
    import urllib.request

    req = urllib.request.Request(f"{server.url}/models", headers={"Authorization": "Bearer sk-test-9f3e1c7a55d24b0e"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["data"][0]["id"]


@pytest.mark.slow
def test_a_refused_key_and_a_missing_key_variable(chat_only_server, tmp_path, monkeypatch):
    model = ["--model", f"openai:{chat_only_server.url}#{_chat_model(chat_only_server)}"]
    result = bench_cli(*model)  # no key configured
    assert result.exit_code == 2 and "HTTP 401" in result.stderr and "api_key_env" in result.stderr
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"models": {"large_llm": {"name": "openai:http://127.0.0.1:1/v1#m",
                                                            "endpoint": {"api_key_env": "UNSET_KEY_VAR"}}}}))
    result = bench_cli("--config", str(config), *model)
    assert result.exit_code == 2 and "UNSET_KEY_VAR, which is not set" in result.stderr


@pytest.mark.slow
def test_the_api_key_never_lands_in_run_files_or_output(chat_only_server, tmp_path, monkeypatch):
    key = "sk-test-9f3e1c7a55d24b0e"
    monkeypatch.setenv("MY_VLLM_KEY", key)
    results = Path(os.environ["ROUTERLLM_BENCH__RESULTS_DIR"])  # this test's own, from the isolating fixture
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"models": {"large_llm": {
        "name": f"openai:{chat_only_server.url}#{_chat_model(chat_only_server)}",
        "endpoint": {"api_key_env": "MY_VLLM_KEY"}}}}))
    outputs, codes = [], []
    for extra in (["--prompt-style", "instruct"], ["--prompt-style", "base"],  # a run, and two failed ones
                  ["--prompt-style", "instruct", "--model", f"openai:{chat_only_server.url}#nope"]):
        r = runner.invoke(app, ["bench", "--config", str(config), "--skip-execution", "-n", "2", "--max-new-tokens",
                                "4", "--json", *extra])
        outputs.append(r.stdout + r.stderr)
        codes.append(r.exit_code)
    assert codes == [0, 2, 2], outputs
    written = [p for p in results.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in written) and any(p.name == "samples.jsonl" for p in written)
    for path in written:
        assert key not in path.read_text(errors="replace"), path
    assert all(key not in out for out in outputs)
    assert "MY_VLLM_KEY" in (results.glob("*/run.json").__next__()).read_text()  # the variable's name is kept


# --- compare: a pool of a local model and an endpoint -----------------------------------------------------------


@pytest.mark.slow
def test_compare_pool_mixes_a_local_model_and_an_endpoint(tiny_server, tiny_dir, tmp_path):
    from routerllm_cli.compare import run_compare

    settings = load_settings(None, {
        "models": {"router": {"policy": "heuristic", "thresholds": [0.24], "pool": [
            {"name": str(tiny_dir), "torch_dtype": "float32"},
            {"name": endpoint_model(tiny_server), "endpoint": {"gpus": 16}, "price_per_gpu_hour": 2.0}]}},
        "bench": {"num_examples": 4, "max_new_tokens": 6, "results_dir": str(tmp_path), **BASE}})
    result = run_compare(settings, tmp_path / "cmp", policy="heuristic")
    rows = {s["name"]: s for s in result["systems"]}
    alone = rows["tiny-llama (alone)"]
    assert alone["kwh"] is None and alone["co2_g"] is None  # nothing measured, no number
    assert alone["cost_usd"] > 0  # 16 GPUs x $2/h x its share of the wall time
    assert any("not measured for tiny-llama" in n for n in alone["notes"])
    local = rows[f"{tiny_dir} (alone)"]
    assert local["kwh"] is not None and not local.get("notes")
    report = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "not measured for tiny-llama (remote endpoint)" in report


# --- the config entry -------------------------------------------------------------------------------------------


def test_the_endpoint_entry_and_its_rules(tmp_path):
    from routerllm_cli.errors import ConfigError

    large = load_settings(None, {"models": {"large_llm": {"name": "openai:http://10.0.0.1:8000#org/Model-7B"}}}).large
    assert large.name == "Model-7B" and large.endpoint.url == "http://10.0.0.1:8000/v1"  # a bare host gets /v1
    assert large.endpoint.served_model == "org/Model-7B" and large.endpoint.concurrency == 8
    secret = "sk-live-0123456789abcdef"
    cases = {
        "openai:http://10.0.0.1:8000/v1": "openai:URL#MODEL",
        f"openai:http://user:{secret}@10.0.0.1/v1#m": "must not carry credentials",
        f"openai:http://10.0.0.1/v1?key={secret}#m": "must not carry credentials",
        "openai:ftp://10.0.0.1/v1#m": "http://HOST:PORT/v1",
    }
    for name, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            load_settings(None, {"models": {"large_llm": {"name": name}}})
        assert expected in info.value.one_line() and secret not in info.value.one_line()
    with pytest.raises(ConfigError) as info:  # the key pasted where its variable's name belongs
        load_settings(None, {"models": {"large_llm": {"name": "openai:http://h/v1#m",
                                                      "endpoint": {"api_key_env": secret}}}})
    assert "never the key itself" in info.value.one_line() and secret not in info.value.one_line()
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"models": {"large_llm": {"name": "openai:http://h/v1#m", "use_4bit": True}}})
    assert "use_4bit cannot apply to an endpoint" in info.value.one_line()
    result = runner.invoke(app, ["bench", "--concurrency", "4", "-n", "1"])
    assert result.exit_code == 2 and "--concurrency applies to endpoint models" in result.stderr
    result = runner.invoke(app, ["load", "--model", "openai:http://127.0.0.1:1/v1#m"])
    assert result.exit_code == 2 and "nothing to plan or load here" in result.stderr
