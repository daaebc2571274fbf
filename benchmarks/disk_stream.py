"""Disk-offloaded layers through the offload engine's read-ahead, against the disk's own cold read rate.

    python benchmarks/disk_stream.py              # runs on CPU or GPU; needs root to drop the page cache

A random Llama checkpoint is written, loaded with its last layers mapped to "disk", and the engine is attached
with no pin budget, so every decode step streams those layers from the checkpoint's safetensors files. Before
each timed step the page cache is dropped, so the reads hit the disk. The disk's rate is measured the same way
(cold, sequential reads of the same files). Prints achieved/measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def drop_page_cache(paths: list[Path]) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for p in paths:  # without root: ask the kernel to forget these files' pages
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return "fadvise"


def cold_read_rate(paths: list[Path]) -> float:
    drop_page_cache(paths)
    total, start = 0, time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while chunk := fh.read(64 << 20):
                total += len(chunk)
    return total / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--disk-layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from routerllm_cli.offload.engine import attach_offload_engine

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    root = args.dir or Path(tempfile.mkdtemp(prefix="routerllm_disk_stream_"))
    ckpt = root / "ckpt"
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn, num_attention_heads=16,
                         num_key_value_heads=4, num_hidden_layers=args.layers, vocab_size=8000,
                         tie_word_embeddings=False)
    if not (ckpt / "config.json").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(dtype).save_pretrained(ckpt, max_shard_size="300MB")
    gpu = 0 if cuda else "cpu"
    first_disk = args.layers - args.disk_layers
    device_map = {"model.embed_tokens": gpu, "model.rotary_emb": gpu, "model.norm": gpu, "lm_head": gpu}
    device_map.update({f"model.layers.{i}": ("disk" if i >= first_disk else gpu) for i in range(args.layers)})
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, device_map=device_map,
                                                 offload_folder=str(root / "offload"))
    engine = attach_offload_engine(model, device_map, pin_budget_bytes=0)
    shards = sorted(ckpt.glob("*.safetensors")) + sorted((root / "offload").glob("*.dat"))
    disk_rate = cold_read_rate(shards)
    ids = torch.randint(0, 8000, (1, 16), device="cuda" if cuda else "cpu")
    rates, how = [], ""
    with torch.inference_mode():
        model(ids)  # warm-up (allocations, first reads)
        for _ in range(args.steps):
            how = drop_page_cache(shards)
            before = engine.stats()
            start = time.perf_counter()
            model(ids)
            if cuda:
                torch.cuda.synchronize()
            after = engine.stats()
            rates.append((after.disk_read_bytes - before.disk_read_bytes) / (time.perf_counter() - start))
    st = engine.stats()
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "disk_layers": st.disk_layers,
        "streamed_layers": st.streamed_layers, "bytes_per_step": st.bytes_per_step,
        "disk_read_rate_cold_GBps": disk_rate / 1e9, "engine_step_read_GBps": [r / 1e9 for r in rates],
        "engine_reader_GBps": st.disk_read_bytes_per_s / 1e9, "cache_drop": how,
        "fraction_of_disk_rate": (sorted(rates)[len(rates) // 2] / disk_rate) if rates else None,
    }
    print(json.dumps(result, indent=2))
    print(f"\n{result['device']}: {st.streamed_layers} layers streamed from disk, "
          f"{st.bytes_per_step / 1e9:.2f} GB/step; cold disk read {disk_rate / 1e9:.2f} GB/s; engine per step "
          f"{result['engine_step_read_GBps']} GB/s -> {result['fraction_of_disk_rate']:.2f} of the disk rate "
          f"(cache dropped with {how})")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "disk_stream.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
