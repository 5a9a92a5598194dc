#!/usr/bin/env bash
# The GPU checks, as one short script for a lent GPU machine (about 15 minutes of device time in
# all): the memory table with the estimate beside it, the cache-fill overlap at a real size, and
# DeepSpeed ZeRO-2/3 when deepspeed is installed. Each check has a time limit of its own, so one
# that hangs leaves time for the rest; a check that cannot run here says why in one line.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]      # results and logs to OUT_DIR (default: $OUT or gpu-checks)
#
# Figures go to the README's memory table (gpu_memory.out, JSON) and the decode-ahead table
# (fill_overlap.out, JSON), with the card named in nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-checks}}
mkdir -p "$out"
python=${PYTHON:-python}

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_checks: $python has no torch that sees a CUDA device: nothing to measure (PYTHON=... to pick another)" >&2
    exit 2
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

check() {  # check NAME SECONDS COMMAND...: run it with a time limit, its stdout to NAME.out
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$out/$name.out" 2> "$out/$name.log"
    local status=$?
    echo "gpu_checks: $name: exit $status in $((SECONDS - started)) s (log: $out/$name.log)"
}

# Real-size 5b LoRA step, peak memory measured against cogvx-ext's estimate, at two sizes.
check gpu_memory 360 "$python" benchmarks/gpu_memory.py --sizes 49x480x720,49x576x1024 --sides ours --json
# Decode ahead with the released VAE in bf16: fill against decode-only and encode-only.
check fill_overlap 240 "$python" benchmarks/fill_overlap.py --device cuda --vae released --dtype bf16 \
    --size 1024x576 --frames 49 --fps 30 --threads 8 --counts 6 --repeats 1 --json
if "$python" -c "import deepspeed" 2> /dev/null; then
    gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
    check deepspeed 240 "$python" benchmarks/deepspeed_check.py --num_processes "$gpus" --steps 4
else
    echo "gpu_checks: deepspeed: not installed here (pip install deepspeed): skipped"
fi
