#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, as one script for a lent GPU machine (about 10 minutes on an H200):
#
#     bash benchmarks/gpu.sh [OUT_DIR]      # default OUT_DIR: benchmarks/results
#
# Needs torch with CUDA, transformers, timm, accelerate, datasets and evaluate importable (the package itself is put
# on PYTHONPATH, so no install is needed); every step prints its table and writes JSON + markdown to OUT_DIR.
# Each step runs even if an earlier one failed; the exit status is the number of failed steps.
set -u
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0
run() { echo "+ $*"; "$@" || { echo "FAILED ($?): $*"; failed=$((failed + 1)); }; }

run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run python3 -c "import torch, transformers, timm, datasets; print(torch.__version__, transformers.__version__, timm.__version__, datasets.__version__, torch.cuda.get_device_name(0))"

# Step cost vs none: CIFAR ResNet-18 (width 64), batch 100, fp32 / bf16 / fp16 (the paper's Table 10 has AdAutoMix at
# 1.53x vanilla s/iter).
common=(--device cuda --width 64 --batch_size 100 --warmup 5 --steps 20 --rounds 3 --out "$OUT")
run timeout 300 python3 benchmarks/step_cost.py "${common[@]}"
run timeout 200 python3 benchmarks/step_cost.py "${common[@]}" --amp bf16 --only none "automix per-pass" "adautomix N=3 per-pass"
run timeout 200 python3 benchmarks/step_cost.py "${common[@]}" --amp fp16 --only none "automix per-pass" "adautomix N=3 per-pass"
run timeout 300 python3 benchmarks/step_cost.py "${common[@]}" --group classic
run timeout 200 python3 benchmarks/step_cost.py "${common[@]}" --channels_last --only none "adautomix N=3 per-pass"

# Data path on the GPU: API/CLI vs a plain loop, loader vs step throughput, whole run.
run timeout 600 python3 benchmarks/data_path.py --device cuda --width 64 --train_samples 10000 --steps 40 \
    --whole_steps 500 --out "$OUT"

# torch.compile and bf16 through the CLI (the Trainer path), 200 steps of AdAutoMix on CIFAR-10.
for flags in "" "--bf16 True" "--torch_compile True"; do
    run timeout 400 python3 examples/run_image_classification.py --mixup adautomix \
        --train_file '../shared/data/cifar10/train-*.parquet' \
        --validation_file ../shared/data/cifar10/test-00000-of-00001.parquet --max_eval_samples 1000 \
        --timm_model resnet18 --cifar_stem --per_device_train_batch_size 100 --max_steps 200 \
        --eval_strategy no --save_strategy no --output_dir "/tmp/gpu_cli" --disable_tqdm True $flags
    python3 -c "import json; r = json.load(open('/tmp/gpu_cli/all_results.json')); print('$flags', {k: r[k] for k in ('train_runtime', 'train_steps_per_second', 'eval_accuracy')})"
    rm -rf /tmp/gpu_cli
done

# Two processes (DDP) when there are two GPUs.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    run timeout 400 torchrun --nproc_per_node 2 examples/run_image_classification.py --mixup adautomix \
        --train_file '../shared/data/cifar10/train-*.parquet' --max_train_samples 20000 \
        --timm_model resnet18 --cifar_stem --per_device_train_batch_size 50 --max_steps 200 \
        --eval_strategy no --save_strategy no --output_dir /tmp/gpu_ddp --disable_tqdm True
fi
exit $failed
