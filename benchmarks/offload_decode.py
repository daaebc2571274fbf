"""Decode speed with CPU/disk-offloaded layers: stock Accelerate hooks vs routerllm's offload engine.

Builds a random Llama-shaped model on the GPU (seconds, unlike CPU init), moves the layers the device map puts
on "cpu"/"disk" off the GPU, dispatches it with stock `accelerate.dispatch_model`, times decode steps, then
attaches `OffloadEngine` to the same dispatched model and times again, in one process. Prints per-step time,
the pinned-copy floor (offloaded bytes / pinned host->device bandwidth measured in this run), the fraction of
the floor reached, tokens/s, and the logits check.

Variants: `bf16` (engine must match stock: same greedy tokens, logits within bf16 tolerance) and `nf4`
(GPU layers bitsandbytes Linear4bit, offloaded layers plain 16-bit as transformers leaves them; the engine
keeps them NF4-packed and must match a reference where every offloaded linear is a GPU Linear4bit).

    python benchmarks/offload_decode.py                     # the field-notes model: 16 x 1.71 GB layers, 9 on CPU
    python benchmarks/offload_decode.py --smoke --disk-layers 3 --pin-budget 100MB
    python benchmarks/offload_decode.py --multi-gpu         # layers over 2 GPUs + CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from routerllm_cli.offload.engine import OffloadEngine  # noqa: E402
from routerllm_cli.units import parse_size  # noqa: E402


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only runs a dry run of the script's logic


def log(msg: str) -> None:
    print(msg, flush=True)


def empty_cache() -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEV == "cuda" else "CPU dry run"


def measure_h2d(nbytes: int, reps: int = 5) -> dict:
    """Host->device GB/s from page-locked (cudaHostRegister, as the engine pins) and pageable memory."""
    host = torch.empty(nbytes, dtype=torch.uint8)
    host.fill_(7)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=DEV)
    out = {}
    for kind in ("pageable", "pinned"):
        if kind == "pinned" and DEV == "cpu":
            out[kind] = out["pageable"]
            break
        if kind == "pinned":
            assert int(torch.cuda.cudart().cudaHostRegister(host.data_ptr(), nbytes, 0)) == 0
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            dev.copy_(host, non_blocking=True)
            sync()
            times.append(time.perf_counter() - t0)
        out[kind] = nbytes / statistics.median(times) / 1e9
    if DEV == "cuda":
        torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
    return out


class TracedEngine(OffloadEngine):
    """The engine, plus a timing event after each staging copy: consecutive copy ends give each copy's time."""

    trace: list

    def _load(self, unit, st, slot):
        super()._load(unit, st, slot)
        if st.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(st.stream)
            self.trace.append((unit.nbytes, ev))


def copy_rates(trace: list) -> list[float]:
    """GB/s of each copy that queued right behind another (the copy stream never idles between them then)."""
    for _, ev in trace:
        ev.synchronize()  # copies on a second GPU's stream are not covered by the step's sync
    return [n / (prev.elapsed_time(ev) / 1e3) / 1e9 for (_, prev), (n, ev) in zip(trace, trace[1:])
            if n >= 2**27]  # fmt: skip


def sustained_h2d(engine: OffloadEngine, seconds: float) -> dict:
    """Copy the engine's own pinned host buffers into its staging slots back to back, with no compute."""
    units = [u for u in engine.units if u.host is not None and u.nbytes >= 2**27]
    if DEV != "cuda" or not units:
        return {}
    st = next(iter(engine.staging.values()))
    stream = torch.cuda.Stream(device=st.device)  # the staging buffers' own device, also with 2 GPUs
    rates, t0, i = [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        u = units[i % len(units)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.device(st.device), torch.cuda.stream(stream):
            start.record(stream)
            st.bufs[i % 2][: u.nbytes].copy_(u.host, non_blocking=True)
            end.record(stream)
        end.synchronize()
        rates.append(u.nbytes / (start.elapsed_time(end) / 1e3) / 1e9)
        i += 1
    third = max(1, len(rates) // 3)
    return {"median_GBps": statistics.median(rates), "first_third_GBps": statistics.median(rates[:third]),
            "last_third_GBps": statistics.median(rates[-third:]), "copies": len(rates)}  # fmt: skip


def build_model(args, gpu_devices: list[int]):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
        max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(f"cuda:{gpu_devices[0]}" if DEV == "cuda" else "cpu"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():  # initialise on the GPU, fast and non-zero whatever the library's init did
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    return model.eval()


def device_map_for(args, gpu_devices: list[int]) -> dict:
    gpu_devices = gpu_devices if DEV == "cuda" else ["cpu"] * len(gpu_devices)
    dm = {"model.embed_tokens": gpu_devices[0], "model.rotary_emb": gpu_devices[0]}
    g = args.gpu_layers
    for i in range(args.layers):
        if i < g:
            dm[f"model.layers.{i}"] = gpu_devices[min(i * len(gpu_devices) // g, len(gpu_devices) - 1)]
        else:
            dm[f"model.layers.{i}"] = "disk" if i >= args.layers - args.disk_layers else "cpu"
    tail = "cpu" if args.lm_head == "cpu" else gpu_devices[-1]
    dm["model.norm"] = tail
    dm["lm_head"] = tail
    return dm


def to_linear4bit(lin, compress: bool):
    import bitsandbytes as bnb

    l4 = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                           compute_dtype=lin.weight.dtype, compress_statistics=compress, quant_type="nf4",
                           device=lin.weight.device)  # fmt: skip
    l4.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, compress_statistics=compress,
                                  quant_type="nf4", module=l4)  # fmt: skip
    if lin.bias is not None:
        l4.bias = torch.nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return l4.to(lin.weight.device)


def swap_linears(root, make) -> list:
    """Replace every plain nn.Linear under root with make(linear); return what to swap back."""
    swaps = []
    for name, mod in list(root.named_modules()):
        if type(mod) is torch.nn.Linear:
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            new = make(mod)
            setattr(parent, child, new)
            swaps.append((parent, child, mod))
    return swaps


@torch.no_grad()
def step_sync(mode: str) -> None:
    """End of a decode step. "stream" waits for the compute stream only, like generate()'s per-step `.item()`;
    "device" (cudaDeviceSynchronize) also waits for the engine's prefetch of the next step's first two layers,
    so the copy engine idles while the host launches the next step: it under-reports the engine."""
    if DEV == "cuda" and mode == "stream":
        for d in range(torch.cuda.device_count()):  # with 2 GPUs the step ends on the last one
            torch.cuda.current_stream(d).synchronize()
    else:
        sync()


def decode(model, ids, steps: int, sync_mode: str = "stream") -> dict:
    """Prefill, then `steps` greedy decode steps, each synchronised; returns the median step time and tokens."""
    out = model(input_ids=ids, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    prefill_logits = out.logits[:, -1].float().cpu()
    tokens = [nxt.cpu()]
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(input_ids=nxt.to(ids.device), past_key_values=out.past_key_values, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        step_sync(sync_mode)
        times.append(time.perf_counter() - t0)
        tokens.append(nxt.cpu())
    timed = times[1:] if len(times) > 1 else times  # the first step still carries first-use costs
    return {"step_s": statistics.median(timed) if timed else float("nan"), "steps": times, "tokens": torch.cat(tokens, 1),
            "prefill_logits": prefill_logits}  # fmt: skip


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    rel = ((a - b).norm() / b.norm()).item()
    return {"max_abs": (a - b).abs().max().item(), "rel": rel, "argmax_equal": bool(torch.equal(a.argmax(-1), b.argmax(-1)))}


def run_variant(args, variant: str, bw: dict, gpu_devices: list[int]) -> dict:
    from accelerate import dispatch_model

    log(f"\n=== variant {variant} ===")
    t0 = time.perf_counter()
    model = build_model(args, gpu_devices)
    dm = device_map_for(args, gpu_devices)
    offloaded = [n for n, d in dm.items() if d in ("cpu", "disk")]
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompts = {b: torch.randint(0, args.vocab, (b, args.prompt_len), generator=gen).to(f"cuda:{gpu_devices[0]}" if DEV == "cuda" else "cpu")
               for b in args.batches}  # fmt: skip
    res = {"variant": variant, "device_map_offloaded": offloaded}
    # what stock moves per step: the offloaded modules' 16-bit bytes
    stock_bytes = sum(p.numel() * p.element_size() for n in offloaded for p in model.get_submodule(n).parameters())
    ref_logits = None
    if variant == "nf4":
        # stock transformers 4-bit with a dict map: GPU linears are Linear4bit, offloaded ones stay 16-bit
        for name, dev in dm.items():
            if dev not in ("cpu", "disk") and name.startswith("model.layers."):
                swap_linears(model.get_submodule(name), lambda m: to_linear4bit(m, args.compress_statistics))
        # reference: the same model with every offloaded linear a GPU Linear4bit (what the engine computes)
        ref_swaps = []
        for name in offloaded:
            if name != "lm_head":
                ref_swaps += swap_linears(model.get_submodule(name), lambda m: to_linear4bit(m, args.compress_statistics))
        ref_logits = decode(model, prompts[args.batches[0]], 0)["prefill_logits"]
        for parent, child, original in ref_swaps:
            setattr(parent, child, original)
        del ref_swaps
        gc.collect()
        empty_cache()
    for name in offloaded:
        model.get_submodule(name).to("cpu")
    empty_cache()
    offload_dir = tempfile.mkdtemp(prefix="routerllm-offload-", dir=args.offload_root)
    dispatch_model(model, device_map=dm, main_device=gpu_devices[0] if DEV == "cuda" else "cpu", offload_dir=offload_dir)
    res["build_s"] = time.perf_counter() - t0
    log(f"built + dispatched in {res['build_s']:.1f} s; offloaded: {len(offloaded)} modules")

    stock = {}
    for b in args.batches if variant == "bf16" else args.batches[:1]:
        stock[b] = decode(model, prompts[b], args.stock_steps)
        log(f"stock     batch {b:3d}: {stock[b]['step_s'] * 1e3:8.1f} ms/step  steps={[round(t, 3) for t in stock[b]['steps']]}")

    t1 = time.perf_counter()
    engine = TracedEngine(model, dm, pin_budget_bytes=args.pin_budget, keep_4bit=variant == "nf4",
                          compress_statistics=args.compress_statistics)  # fmt: skip
    engine.trace = []
    engine.attach()
    res["attach_s"] = time.perf_counter() - t1
    st = engine.stats()
    log(f"engine attached in {res['attach_s']:.1f} s: {st}")
    res["sustained_before"] = sustained_h2d(engine, args.sustain_s)
    log(f"sustained copies over the engine's pinned buffers, no compute: {res['sustained_before']}")
    eng, res["decode_copy_GBps"] = {}, {}
    for b in args.batches:
        if args.device_sync_too:  # the harness of the first GPU runs, for comparison
            dev_sync = decode(model, prompts[b], args.steps, sync_mode="device")
            res.setdefault("engine_step_s_device_sync", {})[b] = dev_sync["step_s"]
            log(f"engine    batch {b:3d}, device-wide sync per step: {dev_sync['step_s'] * 1e3:8.1f} ms/step  "
                f"steps={[round(t, 3) for t in dev_sync['steps']]}")  # fmt: skip
        engine.trace = []
        eng[b] = decode(model, prompts[b], args.steps)
        sync()
        rates = copy_rates(engine.trace)
        third = max(1, len(rates) // 3)
        res["decode_copy_GBps"][b] = {"median": statistics.median(rates), "first_third": statistics.median(rates[:third]),
                                      "last_third": statistics.median(rates[-third:])} if rates else {}  # fmt: skip
        log(f"engine    batch {b:3d}: {eng[b]['step_s'] * 1e3:8.1f} ms/step  steps={[round(t, 3) for t in eng[b]['steps']]}"
            f"  copy GB/s {res['decode_copy_GBps'][b]}")  # fmt: skip
    if args.multi_link:
        res["multi_link"] = multi_link_rows(args, model, dm, engine, eng, prompts, gpu_devices)
    res["sustained_after"] = sustained_h2d(engine, args.sustain_s)
    log(f"sustained copies after decoding: {res['sustained_after']}")
    st = engine.stats()

    floor = st.bytes_per_step / (bw["pinned"] * 1e9)
    res.update({
        "bytes_per_step": st.bytes_per_step, "stock_bytes_per_step": stock_bytes, "floor_s": floor,
        "stock_floor_s": stock_bytes / (bw["pinned"] * 1e9), "pinned_GBps": bw["pinned"],
        "stats": {k: v for k, v in st.__dict__.items()}, "disk_read_GBps": st.disk_read_bytes_per_s / 1e9,
        "rows": [],
    })  # fmt: skip
    for b in args.batches:
        row = {"batch": b, "engine_step_s": eng[b]["step_s"], "engine_tok_s": b / eng[b]["step_s"],
               "fraction_of_floor": floor / eng[b]["step_s"] if floor else None}  # fmt: skip
        if b in stock:
            row.update({"stock_step_s": stock[b]["step_s"], "stock_tok_s": b / stock[b]["step_s"],
                        "speedup": stock[b]["step_s"] / eng[b]["step_s"]})  # fmt: skip
        res["rows"].append(row)

    b0 = args.batches[0]
    if variant == "bf16":
        res["logits_vs_stock"] = compare(eng[b0]["prefill_logits"], stock[b0]["prefill_logits"])
        n = min(stock[b0]["tokens"].shape[1], eng[b0]["tokens"].shape[1])
        res["greedy_tokens_equal"] = bool(torch.equal(stock[b0]["tokens"][:, :n], eng[b0]["tokens"][:, :n]))
        res["pass"] = res["greedy_tokens_equal"] and res["logits_vs_stock"]["rel"] < 1e-2
    else:
        res["logits_vs_reference_nf4"] = compare(eng[b0]["prefill_logits"], ref_logits)
        res["stock_vs_reference_nf4"] = compare(stock[b0]["prefill_logits"], ref_logits)
        res["pass"] = res["logits_vs_reference_nf4"]["rel"] < 1e-2 and res["logits_vs_reference_nf4"]["argmax_equal"]
    engine.detach()
    after = decode(model, prompts[b0], 0)
    res["after_detach_logits_vs_engine"] = compare(after["prefill_logits"], eng[b0]["prefill_logits"])
    del model, engine
    gc.collect()
    empty_cache()
    return res


def multi_link_rows(args, model, dm, engine, single: dict, prompts: dict, gpu_devices: list[int]) -> dict:
    """The same model with every other GPU relaying a share of each offloaded unit: step time against the
    single-link engine's and the measured aggregate floor, logits and tokens against the single-link engine."""
    from routerllm_cli.offload.links import measure_aggregate

    relays = ([d for d in range(torch.cuda.device_count()) if d != gpu_devices[0]] if DEV == "cuda" else ["cpu"])
    out: dict = {"relays": relays, "rows": []}
    bytes_per_step = engine.stats().bytes_per_step
    engine.detach()
    if DEV == "cuda":
        out["aggregate"] = measure_aggregate(gpu_devices[0], relays)
        log(f"aggregate pinned H2D into GPU {gpu_devices[0]}: {out['aggregate']}")
    multi = TracedEngine(model, dm, pin_budget_bytes=args.pin_budget, keep_4bit=engine.keep_4bit,
                         compress_statistics=args.compress_statistics, relays=relays)
    multi.trace = []
    multi.attach()
    out["links"] = multi.stats().links
    out["link_notes"] = list(multi.stats().link_notes)
    floor = bytes_per_step / out["aggregate"]["all_links_bytes_per_s"] if "aggregate" in out else None
    for b in args.batches:
        got = decode(model, prompts[b], args.steps)
        row = {"batch": b, "multi_step_s": got["step_s"], "single_step_s": single[b]["step_s"],
               "speedup_vs_single": single[b]["step_s"] / got["step_s"],
               "fraction_of_aggregate_floor": floor / got["step_s"] if floor else None,
               "tokens_equal_single": bool(torch.equal(got["tokens"], single[b]["tokens"])),
               "logits_vs_single": compare(got["prefill_logits"], single[b]["prefill_logits"])}
        out["rows"].append(row)
        log(f"multi-link batch {b:3d}: {got['step_s'] * 1e3:8.1f} ms/step ({row['speedup_vs_single']:.2f}x single-link"
            + (f", {row['fraction_of_aggregate_floor']:.2f} of the aggregate floor" if floor else "") + ")")
    multi.detach()
    engine.attach()  # the single-link engine again, for the rest of the run
    out["pass"] = all(r["tokens_equal_single"] and r["logits_vs_single"]["rel"] < 1e-2 for r in out["rows"])
    return out


def summarise(results: list[dict], bw: dict) -> str:
    lines = [f"pinned H2D {bw['pinned']:.1f} GB/s, pageable {bw['pageable']:.1f} GB/s ({device_name()})"]
    lines.append(f"{'variant':8s} {'batch':>5s} {'stock ms':>9s} {'engine ms':>9s} {'floor ms':>9s} {'frac':>5s} "
                 f"{'x stock':>7s} {'stock tok/s':>11s} {'eng tok/s':>9s}")  # fmt: skip
    for r in results:
        for row in r["rows"]:
            stock = row.get("stock_step_s")
            lines.append(
                f"{r['variant']:8s} {row['batch']:5d} {stock * 1e3 if stock else float('nan'):9.1f} "
                f"{row['engine_step_s'] * 1e3:9.1f} {r['floor_s'] * 1e3:9.1f} {row['fraction_of_floor'] or 0:5.2f} "
                f"{row.get('speedup', float('nan')):7.2f} {row.get('stock_tok_s', float('nan')):11.2f} "
                f"{row['engine_tok_s']:9.2f}"
            )
        check = r.get("logits_vs_stock") or r.get("logits_vs_reference_nf4")
        lines.append(f"  {r['variant']}: {r['bytes_per_step'] / 1e9:.2f} GB/step, check {check}, "
                     f"tokens equal {r.get('greedy_tokens_equal')}, pass {r['pass']}, "
                     f"disk {r['disk_read_GBps']:.2f} GB/s, attach {r['attach_s']:.1f} s")  # fmt: skip
        if r.get("sustained_before"):
            lines.append(f"  {r['variant']}: sustained copy over the engine's buffers (no compute) before/after decode "
                         f"{r['sustained_before']['median_GBps']:.1f}/{r['sustained_after']['median_GBps']:.1f} GB/s "
                         f"(first/last third {r['sustained_before']['first_third_GBps']:.1f}/"
                         f"{r['sustained_before']['last_third_GBps']:.1f}); copies during decode "
                         + ", ".join(f"b{b}: {v.get('median', 0):.1f} GB/s (first/last third {v.get('first_third', 0):.1f}/"
                                     f"{v.get('last_third', 0):.1f})" for b, v in r["decode_copy_GBps"].items()))  # fmt: skip
        if "stock_vs_reference_nf4" in r:
            lines.append(f"  nf4 stock (16-bit offloaded) vs reference: {r['stock_vs_reference_nf4']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--ffn", type=int, default=28672)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--gpu-layers", type=int, default=7)
    ap.add_argument("--disk-layers", type=int, default=0, help="of the offloaded layers, how many go to disk")
    ap.add_argument("--lm-head", choices=["cpu", "gpu"], default="cpu", help="norm + lm_head placement")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--stock-steps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--variants", default="bf16,nf4")
    ap.add_argument("--pin-budget", default=None, help='e.g. "20GB"; default: no limit')
    ap.add_argument("--no-compress-statistics", dest="compress_statistics", action="store_false")
    ap.add_argument("--multi-gpu", action="store_true", help="split the GPU layers over 2 GPUs")
    ap.add_argument("--multi-link", action="store_true",
                    help="also run the engine with every other GPU relaying shares of each offloaded unit")
    ap.add_argument("--smoke", action="store_true", help="a small model (hidden 1024, 8 layers) for a quick check")
    ap.add_argument("--offload-root", default=None, help="where disk-offloaded layers are written")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the JSON results")
    ap.add_argument("--tag", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-device-sync-too", dest="device_sync_too", action="store_false",
                    help="skip the extra engine decode timed with a device-wide sync per step")
    ap.add_argument("--sustain-s", type=float, default=2.0, help="seconds of the sustained-copy check")
    args = ap.parse_args(argv)
    if args.smoke:  # smaller defaults; flags given explicitly still win
        ap.set_defaults(layers=8, hidden=1024, ffn=3584, heads=8, kv_heads=2, gpu_layers=3, vocab=4096, tag="smoke")
        args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.pin_budget = None if args.pin_budget is None else parse_size(args.pin_budget, what="--pin-budget")
    gpu_devices = [0, 1] if args.multi_gpu else [0]
    if DEV == "cuda" and len(gpu_devices) > torch.cuda.device_count():
        log(f"--multi-gpu needs 2 GPUs, found {torch.cuda.device_count()}")
        return 2
    log(f"torch {torch.__version__}, {device_name()}, args {vars(args)}")
    bw = measure_h2d(min(2**30, 256 * 2**20) if args.smoke else 2**31)
    log(f"H2D: pinned {bw['pinned']:.1f} GB/s, pageable {bw['pageable']:.1f} GB/s")
    results = [run_variant(args, v, bw, gpu_devices) for v in args.variants.split(",")]
    summary = summarise(results, bw)
    log("\n" + summary)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"offload_decode_{args.tag}.json").write_text(json.dumps({"bandwidth": bw, "results": results}, indent=1, default=str))
    return 0 if all(r["pass"] and r.get("multi_link", {}).get("pass", True) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
