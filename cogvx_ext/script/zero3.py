"""DeepSpeed ZeRO-3: whole frozen models and whole LoRA files.

Under ZeRO-3 a parameter's tensor is empty outside the forward of the DeepSpeed engine that owns
it; the engine gathers it from every rank when it runs (a collective). The scripts meet this in
four places, and each fails, waits forever or writes an empty LoRA:

- Every ``transformers`` model loaded while accelerate's ZeRO-3 config is active is partitioned as
  it loads (accelerate 1.x registers the config with transformers whatever ``zero3_init_flag``
  says). The T5 text encoder is frozen and never prepared, so no engine gathers it: its first
  forward fails with ``'weight' must be 2-D``. Frozen models are loaded whole instead, as the
  diffusers Stable Diffusion scripts do (``deepspeed_zero_init_disabled_context_manager``).
- The LoRA save hook runs on every rank under DeepSpeed; reading the adapter's parameters there
  gives empty tensors unless they are gathered first (every rank takes part).
- Validation during training runs on the main process alone; the transformer it runs is the
  partitioned one, whose forward waits for the other ranks to gather its weights: with more than
  one rank it waits forever. It stops with one line instead.
- The final LoRA is saved on the main process only, after training, where a gather would wait for
  ranks that never join. So every rank takes part in a gather right after the last optimizer step
  (cogvx_ext.script.seams finds it), and the main process keeps a copy for that save.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from cogvx_ext.base.errors import UsageError


def zero3_plugin(accelerator: Any) -> Any | None:
    """accelerate's DeepSpeed plugin when the run uses ZeRO stage 3, else None."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if plugin is None or int(getattr(plugin, "zero_stage", 0) or 0) != 3:
        return None
    return plugin


@contextlib.contextmanager
def loading_whole(accelerator: Any) -> Iterator[None]:
    """Models that ``transformers`` loads inside this block are not partitioned by ZeRO-3."""
    plugin = zero3_plugin(accelerator)
    if plugin is None:
        yield
        return
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    if not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # the accelerate call that registered it in the first place


def _partitioned(parameters) -> list[torch.nn.Parameter]:
    return [p for p in parameters if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered(accelerator: Any, parameters) -> Iterator[None]:
    """The ZeRO-3 ``parameters`` are whole inside the block. Collective: every rank must enter."""
    params = _partitioned(parameters) if zero3_plugin(accelerator) is not None else []
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def refuse_partitioned_validation(accelerator: Any, transformer: torch.nn.Module) -> None:
    """Stop, with one line, a validation that would wait forever for the other ranks."""
    processes = int(getattr(accelerator, "num_processes", 1) or 1)
    if processes > 1 and zero3_plugin(accelerator) is not None and _partitioned(transformer.parameters()):
        raise UsageError(
            f"validation during training under DeepSpeed ZeRO-3 with {processes} processes would wait "
            "forever: the main process alone runs the partitioned transformer. Validate after "
            "training (--validation_epochs above the run's epochs; the final validation loads the "
            "LoRA into a whole model), or train with ZeRO-2"
        )


def trainable(models) -> list[torch.nn.Parameter]:
    return [p for model in models for p in model.parameters() if p.requires_grad]


def snapshot_lora(accelerator: Any, transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's whole weights, on the CPU. Collective: every rank must call it."""
    from peft import get_peft_model_state_dict

    with gathered(accelerator, trainable([transformer])):
        state = get_peft_model_state_dict(transformer)
        return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def fill_empty_lora(layers: dict[str, torch.Tensor], snapshot: dict[str, torch.Tensor] | None):
    """``layers`` with each empty (partitioned) tensor replaced by the snapshot's, in its dtype.

    Raises RuntimeError when a tensor is empty and the snapshot lacks it: an empty LoRA file would
    load as an untrained adapter without a word.
    """
    if not any(t.numel() == 0 for t in layers.values()):
        return layers
    filled = {}
    for name, tensor in layers.items():
        if tensor.numel() == 0:
            if not snapshot or name not in snapshot:
                raise RuntimeError(
                    f"ZeRO-3: the LoRA weight {name} is partitioned and no whole copy was taken; "
                    "not writing an empty LoRA file"
                )
            tensor = snapshot[name].to(tensor.dtype)
        filled[name] = tensor
    return filled
