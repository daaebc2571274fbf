"""The cluster planner: parallel sizes the engines accept, memory per GPU from the planner's own sizes, and the
exact launch and bench commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli.app import app
from routerllm_cli.cli.options import model_overrides
from routerllm_cli.config import load_settings
from routerllm_cli.errors import ConfigError
from routerllm_cli.plan.cluster import Cluster, parse_nodes, plan_cluster, valid_tp, vllm_layer_split

runner = CliRunner()


def spec(name: str, **flags):
    return load_settings(None, model_overrides(name, **flags)).large


def test_parse_nodes_reads_sizes_like_every_routerllm_size():
    assert parse_nodes("2x8x80GB") == Cluster(2, 8, 80 * 10**9)
    assert parse_nodes("8x141GiB") == Cluster(1, 8, 141 * 2**30)
    for bad in ("2x8", "x8x80GB", "2x0x80GB", "two nodes"):
        with pytest.raises(ConfigError) as info:
            parse_nodes(bad)
        assert "NODESxGPUSxSIZE" in info.value.fix


def test_tensor_parallel_sizes_the_engines_accept():
    assert [t for t in (1, 2, 4, 8, 16, 32) if valid_tp(t, 128, 8)] == [1, 2, 4, 8, 16, 32]  # KV replicated past 8
    assert [t for t in (1, 2, 4, 8, 16) if valid_tp(t, 232, 8)] == [1, 2, 4, 8]  # Falcon-180B: 232 = 8 x 29
    assert not valid_tp(6, 48, 6)  # a power of two only
    assert vllm_layer_split(126, 2) == [63, 63] and vllm_layer_split(80, 3) == [27, 27, 26]


def test_405b_on_two_nodes_of_eight_80gb_gpus_under_vllm():
    plan = plan_cluster(spec("llama3_405b"), parse_nodes("2x8x80GB"), engine="vllm", seq_len=1408, concurrency=32,
                        head_address="10.0.0.1")
    assert plan.verdict == "go" and (plan.tp, plan.pp, plan.nodes_used) == (8, 2, 2)
    assert [s.layers for s in plan.stages] == [(0, 62), (63, 125)]
    # the planner's bf16 sizes, per stage / TP: the two stages add up to the whole model
    assert sum(s.weight_bytes for s in plan.stages) * 8 == pytest.approx(plan.weights_total_bytes, rel=1e-6)
    assert 50e9 < plan.stages[0].weight_bytes < 51.5e9
    # one KV head a GPU (8 heads / TP 8) x 128 x 2 bytes x K and V, x 63 layers
    assert plan.stages[0].kv_bytes_per_token == 2 * 1 * 128 * 2 * 63
    assert plan.memory_fraction == 0.90 and plan.concurrency == 32 and plan.kv_tokens > 32 * 1408
    runs = [c["run"] for c in plan.commands]
    assert runs[0] == "ray start --head --port=6379" and runs[1] == "ray start --address=10.0.0.1:6379"
    assert runs[2].startswith("vllm serve meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 8 "
                              "--pipeline-parallel-size 2 --max-model-len 1408 --gpu-memory-utilization 0.90")
    assert "--distributed-executor-backend ray" in runs[2]
    assert plan.bench_command == ("routerllm bench --model openai:http://10.0.0.1:8000/v1#meta-llama/"
                                  "Llama-3.1-405B-Instruct --concurrency 32 -n 164")
    assert any("model_sizes" in s for s in plan.sources)


def test_405b_under_sglang_spans_tp_across_nodes():
    plan = plan_cluster(spec("llama3_405b"), parse_nodes("2x8x80GB"), engine="sglang", seq_len=1408, concurrency=32)
    assert plan.verdict == "go" and (plan.tp, plan.pp, plan.nodes_used) == (16, 1, 2)
    assert plan.stages[0].kv_bytes_per_token == 2 * 1 * 128 * 2 * 126  # 8 KV heads over 16 GPUs: one, replicated
    assert any("replicated 2x" in n for n in plan.notes)
    ranks = [c["run"] for c in plan.commands]
    assert len(ranks) == 2 and all("--tp 16" in r and "--nnodes 2" in r and "--dist-init-addr HEAD_IP:20000" in r
                                   for r in ranks)
    assert "--node-rank 0" in ranks[0] and "--node-rank 1" in ranks[1]


def test_405b_in_bf16_does_not_fit_one_node_and_the_fix_says_how_many():
    plan = plan_cluster(spec("llama3_405b"), parse_nodes("1x8x80GB"), engine="vllm", seq_len=1408, concurrency=8)
    assert plan.verdict == "no-go" and not plan.commands
    assert "101.5 GB" in plan.reasons[0]
    assert any("--assume-nodes 2x8x80.0GB" in f for f in plan.fixes) and "--8bit (fp8 weights)" in plan.fixes
    fp8 = plan_cluster(spec("llama3_405b", use_8bit=True), parse_nodes("1x8x80GB"), engine="vllm", seq_len=1408,
                       concurrency=8)
    assert fp8.verdict == "go" and "--quantization fp8" in fp8.commands[0]["run"]


def test_a_small_model_uses_one_node_and_says_the_rest_can_serve_replicas():
    plan = plan_cluster(spec("codellama_70b"), parse_nodes("2x8x80GB"), engine="vllm", seq_len=2048, concurrency=16)
    assert plan.verdict == "go" and plan.nodes_used == 1 and plan.pp == 1
    assert [c["where"] for c in plan.commands] == ["the node"] and "ray start" not in plan.commands[0]["run"]
    assert any("1 node(s) left over" in n for n in plan.notes)


def test_falcon_heads_do_not_split_16_ways_under_sglang():
    plan = plan_cluster(spec("falcon_180b"), parse_nodes("2x8x40GB"), engine="sglang", seq_len=1408, concurrency=8)
    assert plan.verdict == "no-go" and any("do not split 16 ways" in r for r in plan.reasons)
    assert plan_cluster(spec("falcon_180b"), parse_nodes("2x8x40GB"), engine="vllm", seq_len=1408,
                        concurrency=8).verdict == "go"


def test_preflight_engine_cli_prints_the_commands_and_json():
    result = runner.invoke(app, ["preflight", "--model", "llama3_405b", "--engine", "vllm", "--assume-nodes",
                                 "2x8x80GB", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tp"] == 8 and data["pp"] == 2 and data["cluster"]["text"].startswith("2 nodes x 8 GPUs")
    human = runner.invoke(app, ["preflight", "--model", "llama3_405b", "--engine", "vllm", "--assume-nodes",
                                "2x8x80GB", "--head-address", "10.1.2.3"])
    assert human.exit_code == 0
    assert "ray start --address=10.1.2.3:6379" in human.stdout and "verdict: GO" in human.stdout
    assert "routerllm bench --model openai:http://10.1.2.3:8000/v1#meta-llama/Llama-3.1-405B-Instruct" in human.stdout
    nogo = runner.invoke(app, ["preflight", "--model", "llama3_405b", "--engine", "vllm", "--assume-nodes", "8x80GB"])
    assert nogo.exit_code == 1 and "NO-GO" in nogo.stdout
    bad = runner.invoke(app, ["preflight", "--engine", "tgi", "--assume-nodes", "2x8x80GB"])
    assert bad.exit_code == 2 and "use vllm or sglang" in bad.stderr
    alone = runner.invoke(app, ["preflight", "--assume-nodes", "2x8x80GB"])
    assert alone.exit_code == 2 and "--engine vllm" in alone.stderr
