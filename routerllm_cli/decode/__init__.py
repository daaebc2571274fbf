"""GPU-resident decoding: a static KV cache sized by the plan, one decode step captured as a CUDA graph per batch
bucket, continuous batching kept (rows that end leave their slot, the next prompts take it).

- `choice.py`    which path a run takes (`bench.decode: auto | eager | compiled`, `bench.decode_fuse: auto | on |
                 off`) and why
- `static.py`    the static buffers, the step over them, and its CUDA graphs
- `split.py`     the step of a model split over GPUs: one graph per GPU's run of layers, handed over between
- `fuse.py`      the step's decoder layers compiled by inductor (kernel fusion), and where the compile cache lives
- `resident.py`  the chunk decoder `generation.generate_continuous` runs: slots, prefill, stops, fallback
"""

from routerllm_cli.decode.choice import (DECODE_PATHS, FUSE_SETTINGS, DecodeChoice, choose_decode, choose_fuse,
                                         unsupported_reason)
from routerllm_cli.decode.resident import ResidentDecoder, decode_report, decoder_for

__all__ = ["DECODE_PATHS", "FUSE_SETTINGS", "DecodeChoice", "ResidentDecoder", "choose_decode", "choose_fuse",
           "decode_report", "decoder_for", "unsupported_reason"]
