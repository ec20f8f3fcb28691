#!/usr/bin/env bash
# The GPU benchmark run, all in one results file (under 8 minutes on one H200):
#   1. the peer table (benchmarks/peers.py; PyTorch stays eager on the CPU, so drop it there),
#   2. decoder LM train steps, a large one and the small GPTs of gpt_vs_torch.py: tokens/s, TFLOP/s
#      and share of the dense bf16 peak (benchmarks/flops_fraction.py; 989 TFLOP/s on H100 SXM/H200),
#   3. the population benchmark (benchmarks/population.py),
#   4. one exported CPU+CUDA artifact run on each platform (benchmarks/export_devices.py).
# Usage:  bash benchmarks/gpu.sh [RESULTS_FILE]      (default: $OUT/gpu_results.txt, else
#         benchmarks/gpu_results.txt)
#         GPU_BENCH_TINY=1 bash benchmarks/gpu.sh     tiny sizes: a quick check of the script on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JNN_DATA_DIR="${JNN_DATA_DIR:-$(cd .. && pwd)/shared/data}"
PY="${PYTHON:-python}"
RESULTS="${1:-${OUT:+$OUT/gpu_results.txt}}"
RESULTS="${RESULTS:-benchmarks/gpu_results.txt}"
: > "$RESULTS"
section() { echo -e "\n== $1 ($(date -u +%H:%M:%S) UTC)" | tee -a "$RESULTS"; }

section "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } | tee -a "$RESULTS"
"$PY" -c "import jax; print(jax.devices())" | tee -a "$RESULTS"

if [[ "${GPU_BENCH_TINY:-0}" == 1 ]]; then
  PEERS=(--batch 8 --steps 2 --repeats 1 --mlp-batches 64 --mlp-examples 256)
  FLOPS=(--tiny --gpt 0.8M)
  POP=(--members 2 --mnist-examples 256 --repeats 1)
else
  PEERS=(--batch 128 --steps 20 --repeats 7 --frameworks "raw JAX,jnn,Flax Linen,Flax NNX,Equinox")
  FLOPS=(--gpt 0.8M,3M,10M)
  POP=(--members 64 --mnist-examples 2048 --repeats 5)
fi

section "peer table (benchmarks/peers.py ${PEERS[*]})"
timeout 240 "$PY" benchmarks/peers.py "${PEERS[@]}" 2>&1 | tee -a "$RESULTS" || echo "peers.py failed or timed out" | tee -a "$RESULTS"

section "transformer train steps: tokens/s, share of bf16 peak (benchmarks/flops_fraction.py ${FLOPS[*]})"
timeout 180 "$PY" benchmarks/flops_fraction.py "${FLOPS[@]}" 2>&1 | tee -a "$RESULTS" || echo "flops_fraction.py failed or timed out" | tee -a "$RESULTS"

section "population (benchmarks/population.py ${POP[*]})"
timeout 100 "$PY" benchmarks/population.py "${POP[@]}" 2>&1 | tee -a "$RESULTS" || echo "population.py failed or timed out" | tee -a "$RESULTS"

section "exported artifact on every platform (benchmarks/export_devices.py)"
timeout 60 "$PY" benchmarks/export_devices.py 2>&1 | tee -a "$RESULTS" || echo "export_devices.py failed or timed out" | tee -a "$RESULTS"

section "done; results in $RESULTS"
