#!/usr/bin/env bash
# 16:9 fine-tuning of CogVideoX-5b at 1024x576 with cogvx-ext's built-in plugins.
#
#   DIFFUSERS=/path/to/diffusers DATA=/path/to/data bash examples/train_16x9_5b.sh
#
# DATA holds prompts.txt and videos.txt (one line per clip, paths relative to DATA), as the
# diffusers script expects. 16:9 clips train at exactly 1024x576; other aspects (9:16, 4:3, 1:1,
# 21:9...) at a bucket of about the same area instead of being cropped to 16:9.
set -euo pipefail
: "${DIFFUSERS:?set DIFFUSERS to a diffusers checkout (git clone https://github.com/huggingface/diffusers)}"
: "${DATA:?set DATA to a folder with prompts.txt and videos.txt}"
OUT=${OUT:-cogvx-5b-16x9-lora}
PLUGINS=aspect_bucket,rope_rescale
# One 1024x576x49 sample is 13*36*64 = 29952 video tokens + 226 text tokens: a budget of one such
# sample keeps batch 1 at full size and lets smaller shapes (short clips) batch together.
BUDGET=30178
# Shapes change from batch to batch: let the CUDA allocator grow segments instead of fragmenting.
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

# 1. The plan: buckets, crop, skipped clips. Reads clip headers only; takes seconds.
cogvx-ext plan --model 5b --instance_data_root "$DATA" --caption_column prompts.txt --video_column videos.txt \
  --height 576 --width 1024 --fps 8 --max_num_frames 49 --train_batch_size 1 \
  --plugins "$PLUGINS" --bucket_token_budget "$BUDGET" --json "$OUT.plan.json"

# 2. Training: the unmodified script, plus --plugins and the plugins' flags.
accelerate launch "$DIFFUSERS/examples/cogvideo/train_cogvideox_lora.py" \
  --pretrained_model_name_or_path THUDM/CogVideoX-5b \
  --instance_data_root "$DATA" --caption_column prompts.txt --video_column videos.txt \
  --height 576 --width 1024 --fps 8 --max_num_frames 49 \
  --train_batch_size 1 --gradient_accumulation_steps 1 --gradient_checkpointing \
  --mixed_precision bf16 --rank 64 --lora_alpha 64 \
  --learning_rate 1e-4 --lr_scheduler cosine_with_restarts --lr_warmup_steps 100 \
  --optimizer adamw --adam_weight_decay 1e-3 --max_grad_norm 1.0 \
  --num_train_epochs 30 --checkpointing_steps 250 --checkpoints_total_limit 3 \
  --validation_prompt "your validation prompt" --validation_epochs 10 \
  --enable_slicing --enable_tiling --seed 42 --output_dir "$OUT" \
  --plugins "$PLUGINS" --bucket_token_budget "$BUDGET" \
  --validation_resolutions 1024x576,576x1024

# 3. Inference at the trained shapes with the same position scheme:
#   from diffusers import CogVideoXPipeline
#   from cogvx_ext.inference import prepare_pipeline
#   pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-5b"), "$OUT")
