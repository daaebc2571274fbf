"""Load throughput: routerllm's loader vs the disk's sequential read rate vs plain transformers, in one run.

For one checkpoint (a random Llama built by `gpu_load.build_checkpoint`, or `--dir`), with the page cache dropped
before every measurement (`posix_fadvise(DONTNEED)` after `fsync`; O_DIRECT for the raw read where the filesystem
allows it):

1. disk: read every shard sequentially in 64 MiB blocks -> GB/s, the ceiling for any cold load;
2. routerllm: `plan_model` on the probed hardware + `load_model` (tokenizer included) -> GB placed/s, with its
   shard read-ahead and without it (ROUTERLLM_PREFETCH=0);
3. transformers: plain `AutoModelForCausalLM.from_pretrained(dir, device_map="auto", dtype=bf16)` (model only).

Both loads end by touching every page of the tensors they left on the CPU: transformers maps CPU-placed
safetensors weights lazily, so an untouched CPU "load" would read nothing from disk.

Goals checked and printed on the medians of the repeats: routerllm at least as fast as plain transformers, and at
least 80% of the disk rate. Repeats alternate the loaders so none always runs first. JSON goes to $OUT when set.

    python benchmarks/load_speed.py                    # 8 layers x 1.71 GB: ~15 GB bf16, fits one 80 GB GPU
    python benchmarks/load_speed.py --layers 16 --repeats 2
    python benchmarks/load_speed.py --4bit             # the single-threaded transformers path (quantize on load)
    python benchmarks/load_speed.py --smoke            # tiny, on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_load import FULL, SMOKE, build_checkpoint, log  # noqa: E402

BLOCK = 64 * 2**20


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def drop_cache(paths: list[Path]) -> bool:
    """Evict the files from the page cache (clean pages only, hence the fsync). True when the kernel agreed."""
    ok = True
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def _read_direct(path: Path, buf: mmap.mmap) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    total = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            total += n
            if n < len(buf):
                return total
    finally:
        os.close(fd)


def _read_buffered(path: Path, buf: bytearray) -> int:
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            total += n
    return total


def disk_read_rate(paths: list[Path]) -> dict:
    """Sequential read of every shard, cold: O_DIRECT when possible, else buffered after DONTNEED."""
    dropped = drop_cache(paths)
    method = "O_DIRECT"
    aligned = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    start = time.perf_counter()
    total = 0
    try:
        for p in paths:
            total += _read_direct(p, aligned)
    except OSError:  # tmpfs and some overlay filesystems refuse O_DIRECT
        method = "buffered after posix_fadvise(DONTNEED)" if dropped else "buffered (page cache may be warm)"
        drop_cache(paths)
        buf = bytearray(BLOCK)
        start = time.perf_counter()
        total = sum(_read_buffered(p, buf) for p in paths)
    seconds = time.perf_counter() - start
    drop_cache(paths)
    return {"bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9, "method": method}


def touch_cpu_tensors(model) -> int:
    """Read one element per page of every CPU tensor. transformers maps CPU-placed safetensors weights lazily
    (mmap), so without this a CPU "load" reads nothing; GPU-placed weights were copied and need no touch."""
    import torch

    total = 0
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device.type == "cpu" and t.numel():
                flat = t.detach().reshape(-1)
                step = max(1, 4096 // t.element_size())
                flat[::step].float().sum().item()
                total += t.numel() * t.element_size()
    return total


def load_routerllm(ckpt: Path, dtype: str, offload: Path, read_ahead: bool = True, four_bit: bool = False) -> dict:
    from routerllm_cli.config import ModelSpec
    from routerllm_cli.hardware import probe_hardware
    from routerllm_cli.loading import load_model
    from routerllm_cli.plan import plan_model

    spec = ModelSpec(name="bench-llama", model_id=str(ckpt), torch_dtype=dtype, offload_folder=offload,
                     use_4bit=four_bit)
    plan = plan_model(spec, probe_hardware(offload), batch_size=1, seq_len=512, num_examples=1, max_new_tokens=8)
    if plan.verdict != "go":
        raise SystemExit("plan is no-go: " + "; ".join(plan.reasons))
    os.environ["ROUTERLLM_PREFETCH"] = "1" if read_ahead else "0"
    start = time.perf_counter()
    loaded = load_model(plan, spec)
    touch_cpu_tensors(loaded.model)
    seconds = time.perf_counter() - start
    os.environ.pop("ROUTERLLM_PREFETCH", None)
    placement = {d: info["layers"] for d, info in loaded.device_map_summary.items()}
    loaded.close()
    return {"seconds": seconds, "placement": placement}


def load_plain(ckpt: Path, dtype: str, four_bit: bool = False) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    extra = {}
    if four_bit:  # the same quantization config the loader builds
        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_use_double_quant=True,
                                                          bnb_4bit_compute_dtype=torch.bfloat16)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(ckpt, device_map="auto", dtype=getattr(torch, dtype), **extra)
    touch_cpu_tensors(model)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # where the weights really are (hf_device_map is not set when everything went to one device)
    placement = sorted({str(t.device) for t in model.parameters()})
    del model
    return {"seconds": seconds, "placement": placement}


def judge(runs: dict[str, list[dict]], size: int) -> tuple[dict[str, bool], list[str]]:
    """Goals on paired ratios: within one repeat the loaders and the disk read run back to back, so they see the
    same state of a disk whose rate drifts by tens of percent over minutes; the median over repeats is the verdict."""
    pairs = list(zip(runs["disk"], runs["routerllm"], runs["transformers"], runs["routerllm_no_read_ahead"]))
    vs_plain = statistics.median(r["seconds"] / t["seconds"] for _, r, t, _ in pairs)
    vs_plain_no_ra = statistics.median(n["seconds"] / t["seconds"] for _, _, t, n in pairs)
    of_disk = statistics.median(d["seconds"] / r["seconds"] for d, r, _, _ in pairs)  # placed rate / read rate
    median = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    goals = {"at_least_as_fast_as_transformers": vs_plain <= 1.0, "within_80pct_of_disk": of_disk >= 0.8}
    lines = [
        f"medians of {len(pairs)} repeats: disk {size / median['disk'] / 1e9:.2f} GB/s, routerllm "
        f"{size / median['routerllm'] / 1e9:.2f} GB/s, transformers {size / median['transformers'] / 1e9:.2f} GB/s",
        f"paired, median over repeats: routerllm / transformers time {vs_plain:.3f} (without read-ahead "
        f"{vs_plain_no_ra:.3f}); routerllm rate / disk rate {of_disk:.2f}",
    ]
    goals_out = {**goals, "ratios": {"routerllm_over_transformers_time": vs_plain,
                                     "no_read_ahead_over_transformers_time": vs_plain_no_ra,
                                     "routerllm_rate_over_disk_rate": of_disk}}
    return goals_out, lines + [f"goal {g}: {'PASS' if ok else 'FAIL'}" for g, ok in goals.items()]


def _free() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 8; smoke 6)")
    ap.add_argument("--dir", type=Path, default=None, help="an existing checkpoint folder to measure instead")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--4bit", dest="four_bit", action="store_true", help="load with bitsandbytes NF4 (needs CUDA)")
    ap.add_argument("--dtype", default=None, help="bfloat16 (default on GPU) or float32 (default on CPU)")
    ap.add_argument("--offload-folder", type=Path, default=Path("/tmp/routerllm_load_speed_offload"))
    ap.add_argument("--judge", type=Path, default=None, help="recompute the goals of a saved load_speed.json")
    args = ap.parse_args(argv)
    if args.judge:
        saved = json.loads(args.judge.read_text())
        for line in judge(saved["runs"], saved["checkpoint_bytes"])[1]:
            log(line)
        return 0

    import torch

    shape = dict(SMOKE if args.smoke else FULL)
    shape["num_hidden_layers"] = args.layers or (6 if args.smoke else 8)
    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    if args.dir:
        ckpt = args.dir
    else:
        ckpt, _ = build_checkpoint(Path(f"/tmp/routerllm_gpu_load_{'smoke' if args.smoke else 'full'}_"
                                        f"{shape['num_hidden_layers']}l"), shape)
    files = shards(ckpt)
    size = sum(p.stat().st_size for p in files)
    log(f"command: {' '.join([sys.executable, *sys.argv])}")
    log(f"checkpoint {ckpt}: {size / 1e9:.2f} GB in {len(files)} shards; dtype {dtype}; "
        f"GPUs {torch.cuda.device_count()}")

    # The disk is read in every repeat, between the loads: a cloud volume's rate drifts over minutes, and a
    # rate measured once at the start would flatter or punish loads made later.
    runs: dict[str, list[dict]] = {"disk": [], "routerllm": [], "routerllm_no_read_ahead": [], "transformers": []}
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for which in order:
            if which == "disk":
                res = disk_read_rate(files)
                runs["disk"].append(res)
                log(f"{'disk':>23}: {res['seconds']:.2f} s = {res['gb_per_s']:.2f} GB/s ({res['method']})")
                continue
            drop_cache(files)
            _free()
            if which == "transformers":
                res = load_plain(ckpt, dtype, args.four_bit)
            else:
                res = load_routerllm(ckpt, dtype, args.offload_folder, read_ahead=which == "routerllm",
                                     four_bit=args.four_bit)
            res["gb_per_s"] = size / res["seconds"] / 1e9
            runs[which].append(res)
            log(f"{which:>23}: {res['seconds']:.2f} s = {res['gb_per_s']:.2f} GB/s (placed on {res['placement']})")
            _free()

    goals, lines = judge(runs, size)
    for line in lines:
        log(line)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / f"load_speed{'_smoke' if args.smoke else ''}{'_4bit' if args.four_bit else ''}.json"
        path.write_text(json.dumps({"command": sys.argv, "four_bit": args.four_bit, "checkpoint_bytes": size,
                                    "shards": len(files), "dtype": dtype, "runs": runs, "goals": goals},
                                   indent=2, default=str))
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
