#!/usr/bin/env bash
# The one script for a lent GPU machine: install the wheels it lacks, run the cuda-marked tests,
# then benchmarks/gpu.py with the time left. Logs and JSON go to $OUT (default ./gpu-out).
#
# Prepare on the development machine (the GPU machine reaches no registry):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d WHEELS fla-core==0.6.0 flash-linear-attention==0.6.0 rwkv==0.8.32 pyrwkv-tokenizer==0.9.1
# and bring the rwkv.cpp fixtures (RWKVKIT_SHARED=DIR holding fixtures/rwkv-cpp-tiny). Then there:
#   WHEELS=DIR RWKVKIT_SHARED=DIR TOTAL_S=420 bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
START=$(date +%s)
TOTAL_S=${TOTAL_S:-420}
TEST_S=${TEST_S:-170}

if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" | tee -a "$OUT/gpu.txt"

# 1. the cuda-marked tests (every model, op and kernel on the GPU)
# (the files that hold them: collecting the whole suite would import peers the GPU image lacks)
timeout "$TEST_S" python3 -m pytest -m cuda -q -p no:cacheprovider -rs --durations=15 \
    --junitxml="$OUT/cuda-tests.xml" tests/test_cuda.py tests/test_triton_wkv4.py tests/test_fla_kernels.py \
    tests/test_cuda_graphs.py 2>&1 | tee "$OUT/cuda-tests.log" | tail -40
echo "cuda tests exit: ${PIPESTATUS[0]}" | tee -a "$OUT/cuda-tests.log"

# 2. the benchmarks, in the time that is left
LEFT=$(( TOTAL_S - ($(date +%s) - START) - 15 ))
echo "benchmark budget: ${LEFT} s"
python3 benchmarks/gpu.py --json "$OUT/gpu.json" --budget "$LEFT" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60
