"""The cluster planner: a model on N nodes of G GPUs under vLLM or SGLang -> parallel sizes, memory per GPU, and
the exact commands that start the engine and point `routerllm bench` at it.

Layouts are the engines' documented ones. vLLM: tensor parallel (TP) within a node, pipeline parallel (PP) across
nodes over Ray, layers split between stages as vLLM splits them. SGLang: TP across all the GPUs of the nodes it
uses (`--tp 16 --nnodes 2`, its 405B recipe). TP is a power of two that divides the attention heads, and the KV
heads divide it or it divides them (then each GPU keeps one replicated KV head), as both engines require.

Where the numbers come from: weights are the planner's own meta-device sizes of the model's config
(`plan/meta.py` `model_sizes`, the figures `preflight` uses for one machine), summed per pipeline stage and divided
by TP; the KV cache is 2 (K and V) x KV heads per GPU x head_dim x 2 bytes per layer and token; the reserve is the
planner's CUDA context constant plus prefill activations for the engine's token budget and the logits. The engines
measure their own peak at start-up: vLLM logs "GPU KV cache size: N tokens", to be compared with `kv_tokens`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from routerllm_cli.errors import ConfigError
from routerllm_cli.units import format_bytes, parse_size

ENGINES = ("vllm", "sglang")
PREFILL_TOKENS = 8192  # tokens one engine step may prefill (vLLM's max_num_batched_tokens on large GPUs)
VLLM_UTILIZATION = (0.90, 0.95)  # vLLM's default --gpu-memory-utilization, and the most the plan will ask for
SGLANG_STATIC = (0.88, 0.92)  # SGLang's --mem-fraction-static (weights + KV pool) for TP >= 8, and the most
PORTS = {"vllm": 8000, "sglang": 30000}
RAY_PORT = 6379
SGLANG_DIST_PORT = 20000
_NODES = re.compile(r"^\s*(?:(\d+)\s*[xX*]\s*)?(\d+)\s*[xX*]\s*(.+?)\s*$")


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_bytes: int

    @property
    def text(self) -> str:
        return f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.gpus_per_node} GPUs x " \
               f"{format_bytes(self.gpu_bytes)}"


def parse_nodes(text: str) -> Cluster:
    """'2x8x80GB' -> 2 nodes of 8 GPUs of 80 GB; '8x80GB' -> one node. Sizes read like every routerllm size."""
    match = _NODES.match(text or "")
    fix = 'write NODESxGPUSxSIZE like "2x8x80GB" (or GPUSxSIZE like "8x141GB" for one node)'
    if not match or not re.search(r"[A-Za-z]", match.group(3)):  # "2x8" is not 8-byte GPUs
        raise ConfigError(f"--assume-nodes: cannot read {text!r}", fix=fix)
    nodes, gpus = int(match.group(1) or 1), int(match.group(2))
    size = parse_size(match.group(3), what="--assume-nodes GPU memory")
    if nodes < 1 or gpus < 1 or size <= 0:
        raise ConfigError(f"--assume-nodes: {text!r} has no GPUs", fix=fix)
    return Cluster(nodes, gpus, size)


@dataclass
class Stage:
    index: int
    layers: tuple[int, int]  # first and last decoder layer (inclusive)
    weight_bytes: int  # per GPU
    kv_bytes_per_token: int  # per GPU
    reserve_bytes: int  # per GPU
    kv_tokens: int = 0  # tokens of KV cache that fit each GPU of this stage


@dataclass
class ClusterPlan:
    engine: str
    model: str
    cluster: Cluster
    verdict: str
    tp: int = 0
    pp: int = 1
    nodes_used: int = 0
    stages: list[Stage] = field(default_factory=list)
    max_model_len: int = 0
    concurrency: int = 0  # sequences of max_model_len the KV cache holds at once (at most the asked number)
    memory_fraction: float = 0.0  # --gpu-memory-utilization (vLLM) or --mem-fraction-static (SGLang)
    kv_tokens: int = 0  # the smallest stage's, per GPU: what the engine's start-up log should show (about)
    weights_total_bytes: int = 0
    reasons: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    commands: list[dict[str, str]] = field(default_factory=list)  # {"where": ..., "run": ...}
    bench_command: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cluster"] = {**asdict(self.cluster), "text": self.cluster.text}
        return out


def valid_tp(tp: int, heads: int, kv_heads: int) -> bool:
    return tp >= 1 and tp & (tp - 1) == 0 and heads % tp == 0 and (kv_heads % tp == 0 or tp % kv_heads == 0)


def vllm_layer_split(num_layers: int, pp: int) -> list[int]:
    """Layers per stage as vLLM splits them: evenly, the remainder going to the stages before the last (the last
    holds the output head)."""
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return parts


def _heads(cfg: Any) -> tuple[int, int, int]:
    """(attention heads, KV heads, head_dim), with the planner's reading of the config (Falcon's multi-query)."""
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    kv = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None)
    if getattr(cfg, "model_type", "") == "falcon" and not getattr(cfg, "new_decoder_architecture", False):
        kv = 1 if getattr(cfg, "multi_query", True) else heads
    kv = kv or heads
    return heads, kv, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads


class _Model:
    """The facts the layouts need, from the single-machine planner's meta model and sizes."""

    def __init__(self, spec: Any, cluster: Cluster, token: str | None):
        from routerllm_cli.hardware import assume_hardware
        from routerllm_cli.plan.planner import _Planner

        hardware = assume_hardware(f"{cluster.gpus_per_node}x{cluster.gpu_bytes}", None)
        self.planner = planner = _Planner(spec, hardware, batch_size=1, seq_len=1, token=token)
        self.quant = spec.quantization
        sizes = planner.sizes(self.quant).gpu
        model = planner.model
        self.heads, self.kv_heads, self.head_dim = _heads(model.config)
        self.layers = planner.shape.layers
        self.layer_bytes = [sizes[name] for name in self.layers]
        embed = model.get_input_embeddings()
        embed_name = next((n for n, m in model.named_modules() if m is embed), None)
        self.embed_bytes = sizes.get(embed_name, 0) if embed_name else 0
        out = planner.shape.output_module
        self.head_bytes = sizes.get(out, 0) if out else 0  # 0 when tied to the input embeddings
        self.tied = bool(out) and self.head_bytes == 0
        self.rest_bytes = sizes[""] - sum(self.layer_bytes) - self.embed_bytes - self.head_bytes  # final norm
        self.total = sizes[""]
        self.dtype_bytes = planner.dtype_bytes
        self.hidden, self.inter, self.vocab = planner.shape.hidden, planner.shape.intermediate, planner.shape.vocab
        self.name = planner.ref.model_id

    def stages(self, tp: int, split: list[int]) -> list[Stage]:
        kv_per_gpu = max(self.kv_heads // tp, 1)
        kv_layer_token = 2 * kv_per_gpu * self.head_dim * self.dtype_bytes
        out, first = [], 0
        for i, n in enumerate(split):
            weights = sum(self.layer_bytes[first:first + n])
            if i == 0:
                weights += self.embed_bytes
            if i == len(split) - 1:
                weights += self.head_bytes + self.rest_bytes + (self.embed_bytes if self.tied and i > 0 else 0)
            out.append(Stage(i, (first, first + n - 1), math.ceil(weights / tp), kv_layer_token * n,
                             self.reserve(tp, last=i == len(split) - 1)))
            first += n
        return out

    def reserve(self, tp: int, *, last: bool) -> int:
        from routerllm_cli.plan.types import CUDA_CONTEXT_BYTES

        # the planner's prefill peak per token of one layer, with heads and the MLP split over TP
        per_token = (max(3 * self.inter // tp, 7 * self.hidden // tp) + 2 * self.hidden) * self.dtype_bytes
        logits = 2 * PREFILL_TOKENS // 8 * (self.vocab // tp) * 4 if last else 0
        return CUDA_CONTEXT_BYTES + PREFILL_TOKENS * per_token + logits


def plan_cluster(spec: Any, cluster: Cluster, *, engine: str, seq_len: int, concurrency: int,
                 head_address: str = "HEAD_IP", token: str | None = None, num_examples: int = 164) -> ClusterPlan:
    """Plan `spec` (a catalog model, hub id or local folder) on `cluster` under `engine`."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r} is not an engine routerllm plans for", fix="use vllm or sglang")
    if getattr(spec, "endpoint", None) is not None:
        raise ConfigError("--engine plans a model to serve; this entry is an endpoint already",
                          fix="pass --model with a catalog name or hub id, e.g. --model llama3_405b")
    if engine == "sglang" and spec.quantization == "4bit":
        raise ConfigError("routerllm plans SGLang in 16-bit or fp8, not bitsandbytes 4-bit",
                          fix="drop --4bit (use --8bit for fp8), or plan --engine vllm")
    m = _Model(spec, cluster, token)
    plan = ClusterPlan(engine, m.name, cluster, "no-go", max_model_len=seq_len, weights_total_bytes=m.total)
    plan.sources = [
        f"weights: routerllm's meta-device sizes of {m.name}'s config ({_weights_kind(m.quant)}, plan/meta.py "
        f"model_sizes), per pipeline stage, / TP",
        f"KV cache: 2 x {m.kv_heads} KV heads (split over TP, at least one a GPU) x head_dim {m.head_dim} x "
        f"{m.dtype_bytes} bytes, per layer and token",
        f"reserve: CUDA context and allocator slack (the planner's constant) + prefill activations for "
        f"{PREFILL_TOKENS} tokens a step + logits",
        "the engine measures its own peak at start-up (vLLM logs 'GPU KV cache size: N tokens'): compare it with "
        "the KV tokens here",
    ]
    G = cluster.gpus_per_node
    tps = [t for t in (2 ** i for i in range(int(math.log2(G * cluster.nodes)) + 1)) if valid_tp(t, m.heads, m.kv_heads)]
    layouts: list[tuple[int, int, int]] = []  # (tp, pp, nodes)
    for nodes in range(1, cluster.nodes + 1):
        if engine == "vllm":
            node_tps = [t for t in tps if t <= G]
            if node_tps and nodes <= len(m.layers):
                layouts.append((max(node_tps), nodes, nodes))
        elif nodes * G in tps or (nodes == 1 and any(t <= G for t in tps)):
            layouts.append((nodes * G if nodes > 1 else max(t for t in tps if t <= G), 1, nodes))
    if not layouts:
        plan.reasons.append(f"no tensor-parallel size fits {m.heads} heads / {m.kv_heads} KV heads on "
                            f"{G} GPUs a node (it must be a power of two dividing the heads)")
        return plan
    low, high = VLLM_UTILIZATION if engine == "vllm" else SGLANG_STATIC
    for tp, pp, nodes in layouts:
        split = vllm_layer_split(len(m.layers), pp)
        stages = m.stages(tp, split)
        fraction, kv_tokens = _fit(stages, cluster.gpu_bytes, low, high, seq_len * concurrency, engine)
        if kv_tokens >= seq_len:
            for st in stages:
                st.kv_tokens = _kv_room(st, cluster.gpu_bytes, fraction, engine) // st.kv_bytes_per_token
            plan.verdict, plan.tp, plan.pp, plan.nodes_used, plan.stages = "go", tp, pp, nodes, stages
            plan.memory_fraction, plan.kv_tokens = fraction, kv_tokens
            plan.concurrency = min(concurrency, kv_tokens // seq_len)
            break
        last = (tp, pp, nodes, stages)
    else:
        tp, pp, nodes, stages = last
        worst = max(stages, key=lambda s: s.weight_bytes + s.reserve_bytes)
        need = worst.weight_bytes + worst.reserve_bytes + worst.kv_bytes_per_token * seq_len
        plan.tp, plan.pp, plan.nodes_used, plan.stages = tp, pp, nodes, stages
        plan.reasons.append(f"with TP {tp} x PP {pp} on {nodes} node(s), a GPU needs {format_bytes(need)} "
                            f"(weights {format_bytes(worst.weight_bytes)} + reserve {format_bytes(worst.reserve_bytes)}"
                            f" + KV for one {seq_len}-token sequence) of {format_bytes(high * cluster.gpu_bytes)} "
                            f"usable")
        # weights over what a node offers, leaving a sixth of it for the KV cache and the reserves
        more = max(math.ceil(m.total / (G * cluster.gpu_bytes * high * 5 / 6)), cluster.nodes + 1)
        gpu = format_bytes(cluster.gpu_bytes).replace(" ", "")
        if engine == "sglang" and layouts[-1][2] < cluster.nodes:
            plan.reasons.append(f"SGLang's TP spans every GPU of the nodes it uses, and {m.heads} heads / "
                                f"{m.kv_heads} KV heads do not split {2 * layouts[-1][0]} ways")
            plan.fixes.append("--engine vllm (TP within a node, PP across nodes)")
        plan.fixes += [f"more nodes, e.g. --assume-nodes {more}x{G}x{gpu}" if engine == "vllm"
                       else "more nodes (SGLang's TP spans them: a power of two GPUs in all)",
                       "--8bit (fp8 weights)" if m.quant == "none" else "GPUs with more memory"]
        return plan
    _notes(plan, m, cluster, concurrency)
    _commands(plan, spec, head_address, num_examples)
    return plan


def _weights_kind(quant: str) -> str:
    return {"4bit": "NF4, as bitsandbytes stores them", "8bit": "8-bit, the size fp8 weights take"}.get(quant, "bf16")


def _kv_room(stage: Stage, gpu_bytes: int, fraction: float, engine: str) -> int:
    # vLLM's fraction budgets weights, activations and KV; SGLang's static fraction weights and the KV pool only
    used = stage.weight_bytes + (stage.reserve_bytes if engine == "vllm" else 0)
    return int(fraction * gpu_bytes) - used


def _fit(stages: list[Stage], gpu_bytes: int, low: float, high: float, want_tokens: int,
         engine: str) -> tuple[float, int]:
    """The memory fraction to ask for (the engine's default, raised in steps of 0.01 up to `high` while the KV
    cache holds fewer than `want_tokens`), and the KV tokens every stage's GPUs then hold."""
    fraction = low
    while True:
        if engine == "sglang" and any(s.reserve_bytes > (1 - fraction) * gpu_bytes for s in stages):
            return fraction, 0  # activations no longer fit outside the static pool
        tokens = min(_kv_room(s, gpu_bytes, fraction, engine) // s.kv_bytes_per_token for s in stages)
        if tokens >= want_tokens or fraction >= high - 1e-9:
            return round(fraction, 2), max(tokens, 0)
        fraction = round(fraction + 0.01, 2)


def _notes(plan: ClusterPlan, m: _Model, cluster: Cluster, concurrency: int) -> None:
    if plan.concurrency < concurrency:
        plan.notes.append(f"the KV cache holds {plan.concurrency} sequences of {plan.max_model_len} tokens, fewer "
                          f"than the {concurrency} asked: the engine queues the rest")
    spare = cluster.nodes - plan.nodes_used
    if spare:
        plan.notes.append(f"{spare} node(s) left over: they can serve another replica of this layout (bench each "
                          "replica as its own endpoint, or one URL in front of all)")
    if plan.tp > m.kv_heads:
        plan.notes.append(f"TP {plan.tp} > {m.kv_heads} KV heads: each GPU keeps one KV head, replicated "
                          f"{plan.tp // m.kv_heads}x")
    if plan.engine == "vllm" and m.quant == "4bit":
        plan.notes.append("vLLM quantizes with bitsandbytes at load (--quantization bitsandbytes); check that "
                          "your vLLM version supports it with pipeline parallelism")


def _commands(plan: ClusterPlan, spec: Any, head: str, num_examples: int) -> None:
    model = plan.model
    port = PORTS[plan.engine]
    quant = {"4bit": " --quantization bitsandbytes", "8bit": " --quantization fp8"}.get(spec.quantization, "")
    cmds = plan.commands
    if plan.engine == "vllm":
        serve = (f"vllm serve {model} --tensor-parallel-size {plan.tp} --pipeline-parallel-size {plan.pp} "
                 f"--max-model-len {plan.max_model_len} --gpu-memory-utilization {plan.memory_fraction:.2f} "
                 f"--max-num-seqs {max(plan.concurrency, 1)}{quant} --host 0.0.0.0 --port {port}")
        if plan.nodes_used > 1:
            cmds.append({"where": "node 0 (head)", "run": f"ray start --head --port={RAY_PORT}"})
            for n in range(1, plan.nodes_used):
                cmds.append({"where": f"node {n}", "run": f"ray start --address={head}:{RAY_PORT}"})
            serve += " --distributed-executor-backend ray"
            cmds.append({"where": "node 0, once `ray status` shows "
                         f"{plan.tp * plan.pp} GPUs", "run": serve})
        else:
            cmds.append({"where": "the node", "run": serve})
    else:
        for n in range(plan.nodes_used):
            run = (f"python -m sglang.launch_server --model-path {model} --tp {plan.tp} "
                   f"--context-length {plan.max_model_len} --mem-fraction-static {plan.memory_fraction:.2f} "
                   f"--max-running-requests {max(plan.concurrency, 1)}{quant} --host 0.0.0.0 --port {port}")
            if plan.nodes_used > 1:
                run += f" --nnodes {plan.nodes_used} --node-rank {n} --dist-init-addr {head}:{SGLANG_DIST_PORT}"
            cmds.append({"where": f"node {n}" + (" (head)" if n == 0 and plan.nodes_used > 1 else ""), "run": run})
    plan.bench_command = (f"routerllm bench --model openai:http://{head}:{port}/v1#{model} "
                          f"--concurrency {max(plan.concurrency, 1)} -n {num_examples}")
    plan.notes.append("every node needs the same weights (a shared HF cache or the same local path) and the "
                      "same engine version; set NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME to the interface between nodes")
    plan.notes.append("with a key (vLLM --api-key, SGLang --api-key), set endpoint.api_key_env to the variable "
                      "that holds it")
