"""Test plugin: diffusers' LoRA file guess as it was before 0.40, in the training process.

Before 0.40, ``load_lora_weights(folder)`` without ``weight_name`` raised "When using the offline
mode, you must specify a `weight_name`." under HF_HUB_OFFLINE=1, even for a local folder; 0.40
looks into the folder first. This puts the old order back, so CI (on a newer diffusers) meets what
a user of diffusers 0.32-0.39 meets at the scripts' final LoRA reload. benchmarks/compat.py runs
the real old diffusers.
"""

from __future__ import annotations

from cogvx_ext import hookimpl


@hookimpl
def cogvx_configure(args):
    import diffusers.loaders.lora_base as lora_base

    newer_guess = lora_base._best_guess_weight_name

    def guess_as_before_0_40(
        pretrained_model_name_or_path_or_dict, file_extension=".safetensors", local_files_only=False
    ):
        if local_files_only or lora_base.HF_HUB_OFFLINE:
            raise ValueError("When using the offline mode, you must specify a `weight_name`.")
        return newer_guess(pretrained_model_name_or_path_or_dict, file_extension, local_files_only)

    lora_base._best_guess_weight_name = guess_as_before_0_40
