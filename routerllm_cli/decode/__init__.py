"""GPU-resident decoding: a static KV cache sized by the plan, one decode step captured as a CUDA graph per batch
bucket, continuous batching kept (rows that end leave their slot, the next prompts take it).

- `choice.py`    which path a run takes (`bench.decode: auto | eager | compiled`) and why
- `static.py`    the static buffers, the step over them, and its CUDA graphs
- `resident.py`  the chunk decoder `generation.generate_continuous` runs: slots, prefill, stops, fallback
"""

from routerllm_cli.decode.choice import DECODE_PATHS, DecodeChoice, choose_decode, unsupported_reason
from routerllm_cli.decode.resident import ResidentDecoder, decode_report, decoder_for

__all__ = ["DECODE_PATHS", "DecodeChoice", "ResidentDecoder", "choose_decode", "decode_report", "decoder_for",
           "unsupported_reason"]
