#!/usr/bin/env bash
# The GPU checks of one session, in one command (a lent GPU machine is short-lived): correctness against the CPU,
# then the meta-training benchmark's GPU rows at meta-batch $BATCHES (default 16; about 6 minutes on an H200, every
# row a fresh process of about 20 s; "4,16,64" takes 10). results.json is written after every row, and
# `bench_meta.py --report-only --out DIR` prints the tables of a run cut short. Run from the repository root on a
# CUDA machine; logs and JSON go to $OUT (default runs/gpu). `experiments/gpu_session.sh fastfit ARGS` runs the
# 64x64 fast-fit experiment there instead. The machine's image lacks `higher`: install its wheel first
# (../.library/device/README.md says how to carry one).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
B=/tmp/bench
if [ "${1:-check}" = check ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  timeout 150 python3 experiments/gpu_check.py 2>&1 | grep -v FutureWarning | tee "$OUT/gpu_check.log"
  timeout 420 python3 experiments/bench_meta.py --device cuda --batches "${BATCHES:-16}" --compile-batches 16 \
    --warmup 3 --iters 20 --timeout 120 --out $B > "$OUT/bench_meta.log" 2>&1; tail -25 "$OUT/bench_meta.log"
  cp $B/results.json "$OUT/bench_meta.json"
else  # fastfit: 64x64 patches, Meta-SGD, on the GPU; args after "fastfit" are passed on (e.g. --outer-lr 3e-4)
  shift
  python3 experiments/fastfit.py --data patches --size 64 --variants metasgd --device cuda --no-progress "$@"
fi
