"""Load a Llama-shaped checkpoint too big for the GPUs through `plan_model` + `load_model`, in bf16 and in 4-bit.

Builds a random-weight checkpoint quickly (constructed under `with torch.device("cuda")`, saved with
`save_pretrained` to local disk, reused when already there), plans it on the probed hardware under the given
per-device budgets so it needs both GPUs and CPU offload, loads it, runs a greedy test generation and prints the
command, load time, per-device placement and memory, tokens/s and time to first token. JSON goes to $OUT when set.

    python benchmarks/gpu_load.py                      # 12 layers x 1.71 GB (hidden 8192, FFN 28672): ~22 GB bf16
    python benchmarks/gpu_load.py --modes 4bit --budgets-4bit 0=2GiB,1=2GiB,cpu=64GiB
    python benchmarks/gpu_load.py --engines routerllm,accelerate --max-new-tokens 16
    python benchmarks/gpu_load.py --smoke              # tiny, on CPU: checks the script itself

bitsandbytes is not in the GPU image: install the carried wheel with `pip install --no-deps <wheel>` first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The field-notes shape (Llama-3-70B / CodeLlama-70B layer): 1.71 GB a layer in bf16.
FULL = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
            num_hidden_layers=12, vocab_size=32000, max_position_embeddings=4096)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=6, vocab_size=512, max_position_embeddings=512)
PROMPT = "def fibonacci ( n ) : return"


def log(msg: str) -> None:
    print(msg, flush=True)


def write_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer covering every id (random weights emit any id; each decodes to a word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + PROMPT.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(path)


def build_checkpoint(path: Path, shape: dict, *, shard: str = "4GB", seed: int = 0) -> tuple[Path, float]:
    """A random Llama checkpoint at `path` (bf16 safetensors + tokenizer); reused when its config matches.

    Built on the GPU when there is one: CPU init of billions of parameters takes minutes, GPU init seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    marker = path / "config.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if all(saved.get(k) == v for k, v in shape.items()) and list(path.glob("*.safetensors")):
            return path, 0.0
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = torch.bfloat16
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size=shard)
    write_tokenizer(path, config.vocab_size)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    os.sync()
    return path, time.perf_counter() - start


def parse_budgets(text: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        dev, size = item.split("=", 1)
        out[dev.strip()] = size.strip()
    return out


def run_one(ckpt: Path, mode: str, engine: str, budgets: dict, offload: Path, max_new_tokens: int) -> dict:
    """Plan, load, generate, close; every number this prints comes from here."""
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.errors import RouterLLMError
    from routerllm_cli.hardware import probe_hardware
    from routerllm_cli.loading import load_model, test_generation
    from routerllm_cli.plan import plan_model

    record: dict = {"mode": mode, "engine": engine, "budgets": budgets}
    try:
        spec = ModelSpec(name="bench-llama", model_id=str(ckpt), max_memory=budgets, use_4bit=mode == "4bit",
                         torch_dtype="bfloat16", offload_folder=offload, offload_engine=engine)
        plan = plan_model(spec, probe_hardware(offload), batch_size=1, seq_len=512, num_examples=1,
                          max_new_tokens=max_new_tokens)
        record["plan"] = {"verdict": plan.verdict, "reasons": plan.reasons, "fixes": plan.fixes,
                          "devices": {d: {"layers": a.layers, "weight_bytes": a.weight_bytes,
                                          "budget_bytes": a.budget_bytes} for d, a in plan.devices.items()}}
        if plan.verdict != "go":
            record["error"] = "no-go: " + "; ".join(plan.reasons)
            return record
        with load_model(plan, spec) as loaded:
            record.update(loaded.summary())
            test_generation(loaded, PROMPT, max_new_tokens=2)  # warm-up: CUDA kernels, engine prefetch order
            record["generation"] = test_generation(loaded, PROMPT, max_new_tokens=max_new_tokens)
    except RouterLLMError as exc:
        record["error"] = exc.one_line()
    return record


def show(record: dict) -> None:
    from routerllm_cli.units import format_bytes

    head = f"[{record['mode']} / {record['engine']}]"
    if "error" in record:
        log(f"{head} FAILED: {record['error']}")
        return
    log(f"{head} load {record['load_seconds']:.1f} s, attention {record['attn_implementation']}, "
        f"quantization {record['quantization']}")
    for dev, info in record["device_map_summary"].items():
        used = record["memory_used"].get(dev)
        detail = record["memory_detail"].get(dev, {})
        extra = (f" (torch allocated {format_bytes(detail['torch_allocated'])}, reserved "
                 f"{format_bytes(detail['torch_reserved'])})" if "torch_allocated" in detail else "")
        log(f"    {dev:>4}: layers {info['layers'] or '-':>7}  weights {format_bytes(info['bytes']):>9}  "
            f"used {format_bytes(used) if used is not None else '-':>9}{extra}")
    for note in record.get("notes", []):
        log(f"    note: {note}")
    g = record["generation"]
    log(f"    generation: {g['tokens']} tokens in {g['seconds']:.2f} s = {g['tokens_per_second']} tokens/s, "
        f"time to first token {g['time_to_first_token']} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 12; smoke 6)")
    ap.add_argument("--dir", type=Path, default=None, help="checkpoint folder (default /tmp/routerllm_gpu_load_<n>l)")
    ap.add_argument("--modes", default="bf16,4bit")
    ap.add_argument("--engines", default="routerllm", help="comma list of routerllm,accelerate")
    ap.add_argument("--budgets", default="0=8GiB,1=8GiB,cpu=100GiB", help="bf16 max_memory (GPU budgets well "
                    "under the ~22 GB checkpoint so it needs both GPUs and the CPU)")
    ap.add_argument("--budgets-4bit", default="0=2GiB,1=2GiB,cpu=100GiB", help="4-bit max_memory (NF4 is ~6 GB)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--offload-folder", type=Path, default=Path("/tmp/routerllm_gpu_load_offload"))
    args = ap.parse_args(argv)

    shape = dict(SMOKE if args.smoke else FULL)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    budgets = {"bf16": parse_budgets(args.budgets), "4bit": parse_budgets(args.budgets_4bit)}
    if args.smoke and args.budgets == ap.get_default("budgets"):
        budgets = {"bf16": {"cpu": "300KB"}, "4bit": {"cpu": "300KB"}}  # ~half the tiny model spills to disk
    ckpt_dir = args.dir or Path(f"/tmp/routerllm_gpu_load_{'smoke' if args.smoke else 'full'}_{shape['num_hidden_layers']}l")

    import torch

    log("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    log(f"torch {torch.__version__}, cuda {torch.version.cuda}, GPUs: "
        + (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"))
    ckpt, built = build_checkpoint(ckpt_dir, shape)
    size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    log(f"checkpoint {ckpt}: {size / 1e9:.2f} GB, {shape['num_hidden_layers']} layers "
        + (f"(built in {built:.1f} s)" if built else "(reused)"))

    records = []
    for mode in filter(None, args.modes.split(",")):
        for engine in filter(None, args.engines.split(",")):
            record = run_one(ckpt, mode, engine, budgets[mode], args.offload_folder, args.max_new_tokens)
            record["checkpoint_bytes"] = size
            show(record)
            records.append(record)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / f"gpu_load{'_smoke' if args.smoke else ''}.json"
        path.write_text(json.dumps({"command": sys.argv, "shape": shape, "checkpoint_bytes": size,
                                    "records": records}, indent=2, default=str))
        log(f"wrote {path}")
    return 0 if all("error" not in r for r in records if not (args.smoke and r["mode"] == "4bit")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
