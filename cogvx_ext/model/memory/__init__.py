"""Peak accelerator memory of one training step, estimated on the CPU without weights or a GPU.

What it models: the diffusers CogVideoX LoRA scripts as they run (``train_cogvideox_lora.py``,
``train_cogvideox_image_to_video_lora.py``) under ``accelerate``:

* the transformer built from its config, frozen, in the weight dtype of ``--mixed_precision``
  (fp32 for ``no``), with a LoRA adapter of ``--rank`` on ``to_k, to_q, to_v, to_out.0`` (peft puts
  the adapter in the base layer's dtype; the scripts upcast it to fp32 only for fp16);
* its gradients (the LoRA's, all of them counted as resident: the steady state with gradient
  accumulation, and the end of every backward without it);
* the optimizer's states: AdamW/Adam two per parameter in its dtype (plus one parameter-sized
  temporary in the foreach step), ``--use_8bit_adam`` (bitsandbytes) one byte each plus a float
  absmax per 256-block, Prodigy four (``p0``, ``s``, ``exp_avg``, ``exp_avg_sq``);
* the text encoder (T5 encoder, from its config) while it is on the device: the scripts keep it
  there the whole run; the core moves it to the CPU when a plugin answers every prompt embedding
  (``latent_cache``), so ``text_encoder_on_device=False`` then. The VAE stays on the device in both
  scripts whatever the plugins do (encoding happens before training; nothing moves it off);
* the step: the batch as it reaches the device (fp32 latents, their weight-dtype copy, noise,
  the noisy input, prompt embeddings, the rotary tables), the forward under accelerate's autocast
  (emulating CUDA's policy: matmuls and attention in the low precision, layer norms in fp32), the
  loss and the backward, with or without gradient checkpointing;
* with validation on, the validation pipeline's peak: everything resident except gradients, the
  text encoder back on the device (the pipeline moves it), a second VAE (the pipeline loads its
  own), and the larger of the transformer's inference forward (batch 2, classifier-free
  guidance) and the VAE decode (traced, without tiling: the validation pipeline's VAE is a fresh
  one).

How: the step is run under PyTorch's ``FakeTensorMode`` (shapes and dtypes only, no data) with a
``TorchDispatchMode`` that counts the bytes of every live tensor storage created by an operator
and keeps the high-water mark: the same accounting as ``torch.cuda.memory_allocated`` minus the
allocator's rounding. Attention is the fused kernel (flash / memory-efficient on CUDA, its CPU
counterpart here): no ``tokens x tokens`` matrix is kept, as on a GPU. Every transformer block is
the same after the first (whose input comes from the patch embedding), so models of 2 and 3
blocks are traced and the activation peak is extrapolated linearly to the real depth; the same
for the batch size (1 and 2). Traces are cached per shape; about 0.75 s per shape on one core.

What is NOT counted (the estimate is *allocated* memory, ``max_memory_allocated``):

* the caching allocator's reserve and fragmentation (``max_memory_reserved`` is typically 5-20 %
  above allocated, more with changing shapes unless
  ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``);
* the CUDA context and kernel images (about 0.3-0.6 GiB per process, outside PyTorch's counters);
* kernels' workspaces (cuBLAS, cuDNN, flash attention) and NCCL buffers with several processes;
* the prompt encoding's own activations (small, and before the transformer's forward);
* the stock T2V script's latents when not sharded by cogvx-ext (it keeps every encoded posterior
  on the device: with cogvx-ext's data plugins they live on the CPU);
* validation at other sizes than ``--height x --width`` (rope_rescale's ``--validation_resolutions``);
* DeepSpeed, ``torch.compile``, CPU offloading.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.model.facts import RELEASED, VAE_SPATIAL, ModelInfo

GiB = 2**30
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
OPTIMIZERS = ("adam", "adamw", "prodigy")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# Extra room asked of a budget by default: the estimate is allocated memory; the allocator's
# reserve and the CUDA context come on top (see the module docstring).
DEFAULT_MARGIN = 0.15

# Widths and depth of the released transformers (their transformer/config.json); model.RELEASED
# has the positional settings.
_RELEASED_WIDTHS = {
    "2b": dict(num_attention_heads=30, num_layers=30),
    "5b": dict(num_attention_heads=48, num_layers=42),
    "5b-I2V": dict(num_attention_heads=48, num_layers=42),
    "1.5-5B": dict(num_attention_heads=48, num_layers=42),
    "1.5-5B-I2V": dict(num_attention_heads=48, num_layers=42),
}
_COMMON_WIDTHS = dict(
    attention_head_dim=64,
    text_embed_dim=4096,
    time_embed_dim=512,
    max_text_seq_length=226,
    temporal_compression_ratio=4,
)
# The T5 v1.1 XXL encoder every CogVideoX release ships (text_encoder/config.json).
RELEASED_T5 = dict(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64)
# bitsandbytes' 8-bit optimizers quantize their states in blocks of 256 with a float32 absmax each.
_BNB_BLOCK = 256


def released_transformer_config(name: str) -> dict[str, Any]:
    """The full transformer config of a released model (``2b``, ``5b``, ``5b-I2V``, ``1.5-5B``, ...)."""
    if name not in RELEASED:
        raise UsageError(f"unknown model {name!r}: one of {', '.join(sorted(RELEASED))}")
    return {**_COMMON_WIDTHS, **RELEASED[name], **_RELEASED_WIDTHS[name]}


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _released_name_from_id(model_id: str) -> str | None:
    """``THUDM/CogVideoX1.5-5B-I2V`` -> ``1.5-5B-I2V``; None when the name says nothing."""
    text = model_id.lower().replace("_", "-")
    if "cogvideox" not in text:
        return None
    version = "1.5-5B" if re.search(r"cogvideox-?1\.5", text) else None
    i2v = "i2v" in text
    if version:
        return version + ("-I2V" if i2v else "")
    if "2b" in text:
        return "2b"
    if "5b" in text:
        return "5b-I2V" if i2v else "5b"
    return None


def model_configs(pretrained: str | None, model: str | None) -> tuple[dict, dict, dict]:
    """(transformer, text encoder, VAE) configs: a local folder's, else the released ones.

    ``pretrained`` is ``--pretrained_model_name_or_path``: a local folder is read; a Hub id is
    matched to a released model by its name (nothing is downloaded); ``model`` (``--model``)
    names one directly.
    """
    if pretrained and os.path.isdir(pretrained):
        transformer = _read_json(os.path.join(pretrained, "transformer", "config.json"))
        if transformer is None:
            raise UsageError(f"no transformer/config.json under '{pretrained}'")
        text = _read_json(os.path.join(pretrained, "text_encoder", "config.json")) or RELEASED_T5
        vae = _read_json(os.path.join(pretrained, "vae", "config.json")) or {}
        return transformer, text, vae
    name = (
        model
        or (_released_name_from_id(pretrained) if pretrained else None)
        or (None if pretrained else "5b")
    )
    if name is None:
        raise UsageError(
            f"cannot tell which CogVideoX '{pretrained}' is without downloading it: give a local folder "
            f"or --model ({', '.join(sorted(RELEASED))})"
        )
    return released_transformer_config(name), dict(RELEASED_T5), {}


def _from_hub_cache(pretrained: str | None, model: str | None) -> tuple[dict, dict, dict] | None:
    """The configs of a Hub model already in the local Hugging Face cache (nothing is downloaded)."""
    if not pretrained or model:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = {
            part: try_to_load_from_cache(pretrained, f"{part}/config.json")
            for part in ("transformer", "text_encoder", "vae")
        }
    except Exception:  # not a repo id: name matching decides
        return None
    if not isinstance(found["transformer"], str):
        return None
    configs = [_read_json(v) if isinstance(v, str) else None for v in found.values()]
    return configs[0], configs[1] or dict(RELEASED_T5), configs[2] or {}


@dataclass(frozen=True)
class TrainingSetup:
    """What decides the memory of a step, besides the shape and the batch size.

    ``transformer`` is the transformer's config as JSON text (hashable, so traces cache per setup).
    """

    transformer: str
    text_encoder: str = json.dumps(RELEASED_T5, sort_keys=True)
    vae: str = "{}"
    rank: int = 128
    lora_alpha: float = 128.0
    optimizer: str = "adamw"
    use_8bit_adam: bool = False
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    text_encoder_on_device: bool = True
    vae_on_device: bool = True
    validation: tuple[int, int, int] | None = None  # (frames, height, width) of validation videos
    autocast: bool = True  # accelerate's autocast around the forward (False: pure low precision)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise UsageError(
                f"--mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, not {self.mixed_precision!r}"
            )
        if self.rank < 1:
            raise UsageError(f"--rank must be at least 1, not {self.rank}")

    @classmethod
    def build(cls, transformer: dict, text_encoder: dict | None = None, vae: dict | None = None, **kw):
        return cls(
            transformer=json.dumps(_plain(transformer), sort_keys=True),
            text_encoder=json.dumps(_plain(text_encoder or RELEASED_T5), sort_keys=True),
            vae=json.dumps(_plain(vae or {}), sort_keys=True),
            **kw,
        )

    @property
    def transformer_config(self) -> dict[str, Any]:
        return json.loads(self.transformer)

    @property
    def model(self) -> ModelInfo:
        return ModelInfo.from_config(self.transformer_config)

    @property
    def num_layers(self) -> int:
        return int(self.transformer_config.get("num_layers", 30))

    def describe(self) -> str:
        optimizer = (
            "8-bit " + self.optimizer
            if self.use_8bit_adam and self.optimizer != "prodigy"
            else self.optimizer
        )
        return (
            f"{self.model.name} ({self.num_layers} layers), LoRA rank {self.rank}, {optimizer}, "
            f"mixed precision {self.mixed_precision}, gradient checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}, text encoder "
            f"{'on the device' if self.text_encoder_on_device else 'on the CPU'}, VAE "
            f"{'on the device' if self.vae_on_device else 'on the CPU'}, validation "
            + (
                "off"
                if self.validation is None
                else "{1}x{0}x{2}".format(*self.validation[1:], self.validation[0])
            )
        )


def _plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def setup_from_args(
    args: Any,
    model: str | None = None,
    text_encoder_on_device: bool = True,
    transformer_config: dict | None = None,
    mixed_precision: str | None = None,
) -> TrainingSetup:
    """The setup of a run from the training script's flags (an argparse namespace).

    ``text_encoder_on_device``: False when a chosen plugin answers every prompt embedding (the core
    then moves the text encoder to the CPU for the rest of the run). ``transformer_config`` (a
    loaded model's) and ``mixed_precision`` (the accelerator's) replace what the flags say.
    """
    pretrained = getattr(args, "pretrained_model_name_or_path", None)
    if transformer_config is not None:
        try:
            _, text, vae = model_configs(pretrained, model or getattr(args, "model", None))
        except UsageError:
            text, vae = dict(RELEASED_T5), {}
        transformer = dict(transformer_config)
    else:
        transformer, text, vae = model_configs(pretrained, model or getattr(args, "model", None))
    optimizer = str(getattr(args, "optimizer", None) or "adamw").lower()
    validation = None
    if getattr(args, "validation_prompt", None):
        # The scripts' validation: --height x --width, the pipeline's default frame count.
        validation = (
            int(transformer.get("sample_frames", 49)),
            int(getattr(args, "height", 480) or 480),
            int(getattr(args, "width", 720) or 720),
        )
    return TrainingSetup.build(
        transformer,
        text,
        vae,
        rank=int(getattr(args, "rank", None) or 128),
        lora_alpha=float(getattr(args, "lora_alpha", None) or 128),
        optimizer=optimizer if optimizer in OPTIMIZERS else "adamw",
        use_8bit_adam=bool(getattr(args, "use_8bit_adam", False)),
        # The script's default (None) leaves it to accelerate, whose launcher exports its choice.
        mixed_precision=str(
            mixed_precision
            or getattr(args, "mixed_precision", None)
            or os.environ.get("ACCELERATE_MIXED_PRECISION")
            or "no"
        ),
        gradient_checkpointing=bool(getattr(args, "gradient_checkpointing", False)),
        text_encoder_on_device=text_encoder_on_device,
        validation=validation,
    )


def add_setup_arguments(parser: Any) -> None:
    """The training script's flags the estimate depends on (same names and defaults), for tools
    that take the training command's flags (``cogvx-ext plan``); flags the parser has are kept."""
    group = parser.add_argument_group("the training script's flags the memory estimate reads")
    flags = [
        ("--rank", dict(type=int, default=128)),
        ("--lora_alpha", dict(type=float, default=128)),
        ("--mixed_precision", dict(choices=MIXED_PRECISIONS, default=None)),
        ("--gradient_checkpointing", dict(action="store_true")),
        ("--optimizer", dict(type=str.lower, choices=OPTIMIZERS, default="adam")),
        ("--use_8bit_adam", dict(action="store_true")),
        ("--validation_prompt", dict(default=None)),
    ]
    for flag, options in flags:
        if flag not in parser._option_string_actions:
            group.add_argument(flag, **options)


def setup_for_plugins(pm: Any, args: Any, model: str | None = None, **overrides: Any) -> TrainingSetup:
    """The run's setup, with what the chosen plugins change: a plugin answering
    ``cogvx_prompt_embeddings`` takes the text encoder off the device (the core moves it to the CPU
    once every prompt is answered, before the first step). ``overrides`` go to ``setup_from_args``."""
    from cogvx_ext.plugin.manager import chosen_hooks

    return setup_from_args(
        args, model, text_encoder_on_device="cogvx_prompt_embeddings" not in chosen_hooks(pm), **overrides
    )


def check_before_loading(pm: Any, args: Any, model_info: ModelInfo | None, model: str | None = None) -> None:
    """Fire ``cogvx_memory_check`` when a chosen plugin implements it (before any model loads)."""
    from cogvx_ext.plugin.manager import chosen_hooks

    if "cogvx_memory_check" not in chosen_hooks(pm):
        return
    try:
        setup = setup_for_plugins(pm, args, model)
    except UsageError:
        # The configs cannot be had without a download: a plugin that needs them says so itself
        # (setup_from_args gives the reason); the others go on.
        setup = None
    pm.hook.cogvx_memory_check(
        setup=setup,
        args=args,
        model=model_info or (setup.model if setup else None),
        stages=pm.hook.cogvx_stages(args=args),
    )


# ---------------------------------------------------------------------------------------------
# Counting live storages


class LiveStorageCounter:
    """A ``TorchDispatchMode`` that counts the bytes of the storages operators create while it is
    active, as long as they live, and keeps the high-water mark (``peak``).

    Works on real and fake tensors alike: a storage is counted once however many views share it,
    and leaves the count when it is freed (a weak reference on the storage; PyTorch keeps the
    storage's Python object exactly as long as the storage).
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for item in tree_flatten(out)[0]:
                    counter._track(item)
                return out

        self._mode = _Mode()
        self._live: dict[int, Any] = {}
        self._excluded: set[int] = set()
        self.current = 0
        self.peak = 0

    def exclude(self, tensors) -> None:
        """Storages made before counting began (weights): views of them are not new memory. The
        tensors must outlive the counting."""
        for tensor in tensors:
            self._excluded.add(tensor.untyped_storage()._cdata)

    def _track(self, tensor: Any) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live or key in self._excluded:
            return
        size = storage.nbytes()
        self._live[key] = weakref.ref(storage, functools.partial(self._freed, key, size))
        self.current += size
        self.peak = max(self.peak, self.current)

    def _freed(self, key: int, size: int, _ref: Any) -> None:
        if self._live.pop(key, None) is not None:
            self.current -= size

    def reset_peak(self) -> None:
        self.peak = self.current

    def __enter__(self) -> LiveStorageCounter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def _fp32_layer_norms(module) -> None:
    """Give CPU autocast CUDA's rule for layer norms in this (trace-only) module: CUDA autocast runs
    ``layer_norm`` in float32 (CPU autocast keeps the low precision), so under CUDA autocast the
    norms' outputs, and the residual stream they feed, are float32. Set on the instances, so that
    gradient checkpointing's recomputation in the backward does the same."""
    import torch
    import torch.nn.functional as F

    def forward(norm, x):
        if not torch.is_autocast_enabled("cpu"):
            return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        weight = None if norm.weight is None else norm.weight.float()
        bias = None if norm.bias is None else norm.bias.float()
        with torch.autocast("cpu", enabled=False):
            return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)

    for sub in module.modules():
        if isinstance(sub, torch.nn.LayerNorm):
            sub.forward = functools.partial(forward, sub)


# ---------------------------------------------------------------------------------------------
# Models on the meta device, made fake for tracing


def _dtype(setup: TrainingSetup):
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[setup.mixed_precision]


def _trace_config(setup: TrainingSetup, layers: int) -> dict[str, Any]:
    config = _plain(setup.transformer_config)
    config["num_layers"] = layers
    # The 5b-I2V learned table only fits 49x480x720; per-shape adaptation (posemb_adapt) or none
    # changes nothing in the activations' size, so the trace goes without it.
    config["use_learned_positional_embeddings"] = False
    return config


def _build_transformer(setup: TrainingSetup, config: dict[str, Any], device: str = "meta"):
    """The transformer as the script has it after set-up (on the meta device unless told): weight
    dtype, frozen, gradient checkpointing as asked, the LoRA adapter (fp32 for fp16 mixed precision)."""
    import logging

    import torch
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.utils import logging as diffusers_logging
    from peft import LoraConfig

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(logging.ERROR)  # `.to(dtype)` warns about keep-in-fp32 modules
    try:
        with torch.device(device):
            transformer = CogVideoXTransformer3DModel.from_config(config)
        transformer.to(_dtype(setup))
    finally:
        diffusers_logging.set_verbosity(level)
    transformer.requires_grad_(False)
    if setup.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.add_adapter(
        LoraConfig(
            r=setup.rank,
            lora_alpha=setup.lora_alpha,
            init_lora_weights=True,
            target_modules=list(LORA_TARGETS),
        )
    )
    if setup.mixed_precision == "fp16":
        for parameter in transformer.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    return transformer


def _fake_module(module, mode) -> None:
    """Replace every parameter and buffer of a meta-device module by a fake CPU tensor of its shape."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    cpu = torch.device("cpu")
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                fake = FakeTensor(mode, p.data.to("meta"), cpu)
                sub._parameters[name] = torch.nn.Parameter(fake, requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = FakeTensor(mode, b.to("meta"), cpu)


def _module_tensors(module) -> list:
    tensors = [*module.parameters(), *module.buffers()]
    return tensors + [p.grad for p in module.parameters() if p.grad is not None]


@dataclass(frozen=True)
class ParameterBytes:
    base: int  # frozen transformer weights and buffers
    lora: int  # trainable parameters
    lora_count: int


@functools.lru_cache(maxsize=32)
def transformer_bytes(setup: TrainingSetup) -> ParameterBytes:
    """Bytes of the full transformer's frozen weights (buffers included) and of its LoRA."""
    transformer = _build_transformer(setup, _plain(setup.transformer_config))
    base = lora = count = 0
    for p in transformer.parameters():
        size = p.numel() * p.element_size()
        if p.requires_grad:
            lora += size
            count += p.numel()
        else:
            base += size
    base += sum(b.numel() * b.element_size() for b in transformer.buffers())
    return ParameterBytes(base, lora, count)


def text_encoder_bytes(setup: TrainingSetup) -> int:
    """A T5 encoder's weights in the weight dtype, from its config (embedding, 24 gated-GELU blocks)."""
    c = json.loads(setup.text_encoder)
    d, ff, heads, kv = c.get("d_model", 4096), c.get("d_ff", 10240), c.get("num_heads", 64), c.get("d_kv", 64)
    gated = str(c.get("feed_forward_proj", "gated-gelu")).startswith("gated")
    per_layer = 4 * d * heads * kv + (3 if gated else 2) * d * ff + 2 * d
    count = c.get("vocab_size", 32128) * d + c.get("num_layers", 24) * per_layer + d
    count += c.get("relative_attention_num_buckets", 32) * heads
    return count * _dtype(setup).itemsize


@functools.lru_cache(maxsize=8)
def _vae_count(vae_config: str) -> int:
    import torch
    from diffusers import AutoencoderKLCogVideoX

    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX.from_config(_plain(json.loads(vae_config)))
    return sum(p.numel() for p in vae.parameters())


def vae_bytes(setup: TrainingSetup) -> int:
    return _vae_count(setup.vae) * _dtype(setup).itemsize


def optimizer_state_bytes(setup: TrainingSetup, lora: ParameterBytes) -> tuple[int, int]:
    """(states, the step's own temporaries) of the optimizer over the LoRA parameters."""
    if setup.optimizer == "prodigy":
        return 4 * lora.lora, 0  # p0, s, exp_avg, exp_avg_sq; updated one tensor at a time
    if setup.use_8bit_adam:
        per_state = lora.lora_count + 4 * math.ceil(lora.lora_count / _BNB_BLOCK)
        return 2 * per_state, 0  # fused kernel
    # torch.optim.AdamW/Adam, foreach on CUDA: exp_avg and exp_avg_sq, and sqrt(exp_avg_sq) as a
    # temporary list during the step.
    return 2 * lora.lora, lora.lora


# ---------------------------------------------------------------------------------------------
# The traced step


def _latent_for_model(model: ModelInfo, latent: tuple[int, int, int]) -> tuple[int, int, int]:
    frames, height, width = latent
    if model.patch_size_t:
        frames += -frames % model.patch_size_t  # rope_rescale pads as the 1.5 pipelines do
    return frames, height, width


@functools.lru_cache(maxsize=4096)
def step_activation_peak(
    setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int, layers: int, train: bool = True
) -> int:
    """Bytes above the resident weights, gradients and states at the peak of one step of a
    ``layers``-block copy of the transformer (``train``: forward and backward; else a no-grad
    forward, as in inference), traced with fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    transformer = _build_transformer(setup, _trace_config(setup, layers))
    mode = FakeTensorMode()
    _fake_module(transformer, mode)
    return trace_step(transformer, setup, latent, batch_size, train, mode)


def trace_step(
    transformer, setup: TrainingSetup, latent, batch_size: int, train: bool = True, mode=None
) -> int:
    """Run one step of the script on ``transformer`` and return the peak bytes of the storages it
    made (its weights and the gradients excluded).

    ``mode``: the ``FakeTensorMode`` the module's tensors belong to; ``None`` runs real tensors
    (what the tests compare the fake trace with).
    """
    import contextlib

    import torch

    context = mode if mode is not None else contextlib.nullcontext()
    config = transformer.config
    dtype = _dtype(setup)
    model = ModelInfo.from_config(config)
    frames, height, width = _latent_for_model(model, latent)
    channels = int(config.in_channels)
    head_dim = int(config.attention_head_dim)
    tokens = model.tokens((frames, height, width))
    with context:
        if train:
            # Resident gradients: the backward accumulates into them (see the module docstring).
            for p in transformer.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
    counter = LiveStorageCounter()
    counter.exclude(_module_tensors(transformer))
    autocast = setup.autocast and setup.mixed_precision != "no"
    _fp32_layer_norms(transformer)
    with context, counter, torch.set_grad_enabled(train):
        # The batch as it reaches the device: float32 from the collate function, then the weight
        # dtype; noise and the noisy input; prompt embeddings; the rotary tables.
        batch = torch.randn(batch_size, frames, channels, height, width, dtype=torch.float32)
        model_input = batch.to(dtype)
        noise = torch.randn_like(model_input)
        noisy = model_input * 0.5 + noise * 0.5
        prompt = torch.randn(batch_size, config.max_text_seq_length, config.text_embed_dim, dtype=dtype)
        timesteps = torch.randint(0, 1000, (batch_size,))
        rotary = (torch.ones(tokens, head_dim), torch.zeros(tokens, head_dim)) if model.rotary else None
        extra = {"ofs": torch.full((batch_size,), 2.0, dtype=dtype)} if model.ofs else {}
        transformer.train(train)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            output = transformer(
                hidden_states=noisy,
                encoder_hidden_states=prompt,
                timestep=timesteps,
                image_rotary_emb=rotary,
                return_dict=False,
                **extra,
            )[0]
        if train:
            output = output.float() if autocast else output  # accelerate's convert_outputs_to_fp32
            target = model_input[:, :, : output.shape[2]]
            weights = torch.ones(batch_size, 1, 1, 1, 1)
            prediction = output * 0.5 - noisy[:, :, : output.shape[2]] * 0.5  # get_velocity
            loss = torch.mean((weights * (prediction - target) ** 2).reshape(batch_size, -1), dim=1).mean()
            loss.backward()
    return counter.peak


def _extrapolate(measure: Callable[[int], int], target: int, first: int = 1) -> int:
    """A quantity linear in ``n`` (from ``first`` on) at ``n = target``, from ``n = first, first + 1``."""
    if target <= first + 1:
        return measure(max(1, target))
    a, b = measure(first), measure(first + 1)
    return max(b, b + (target - first - 1) * (b - a))


# The first block differs from the others (its input comes from the patch embedding, in the
# weight dtype, not from a block), so depth is extrapolated from 2 and 3 blocks.
_FIRST_DEPTH = 2


def activation_peak(setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int) -> int:
    """The step's activation peak at the real depth, from traces of 2 and 3 blocks."""
    return _extrapolate(
        lambda n: step_activation_peak(setup, latent, batch_size, n), setup.num_layers, _FIRST_DEPTH
    )


# ---------------------------------------------------------------------------------------------
# Validation


@functools.lru_cache(maxsize=16)
def vae_decode_peak(setup: TrainingSetup, latent: tuple[int, int, int]) -> int:
    """Activation peak of decoding one video of this latent shape with a VAE without tiling."""
    import torch
    from diffusers import AutoencoderKLCogVideoX
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX.from_config(_plain(json.loads(setup.vae)))
    vae.to(_dtype(setup))
    mode = FakeTensorMode()
    _fake_module(vae, mode)
    channels = int(vae.config.latent_channels)
    counter = LiveStorageCounter()
    counter.exclude(_module_tensors(vae))
    with mode, counter, torch.no_grad():
        latents = torch.empty(1, channels, *latent, dtype=_dtype(setup))
        vae.decode(latents)
    return counter.peak


def validation_latent(setup: TrainingSetup) -> tuple[int, int, int] | None:
    if setup.validation is None:
        return None
    frames, height, width = setup.validation
    model = setup.model
    return _latent_for_model(model, model.latent_shape(frames, height, width))


# ---------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak allocated accelerator memory of one training step, by term (bytes)."""

    latent: tuple[int, int, int]
    batch_size: int
    terms: dict[str, int] = field(hash=False)
    validation_terms: dict[str, int] | None = field(default=None, hash=False)

    @property
    def train_peak(self) -> int:
        return sum(self.terms.values())

    @property
    def validation_peak(self) -> int | None:
        return None if self.validation_terms is None else sum(self.validation_terms.values())

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.validation_peak or 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak,
            "train_peak_bytes": self.train_peak,
            "validation_peak_bytes": self.validation_peak,
            "terms": dict(self.terms),
            "validation_terms": None if self.validation_terms is None else dict(self.validation_terms),
        }


TERM_LABELS = {
    "transformer": "transformer weights (frozen)",
    "lora": "LoRA weights",
    "lora_grads": "LoRA gradients",
    "optimizer": "optimizer states",
    "text_encoder": "text encoder weights",
    "vae": "VAE weights",
    "activations": "step peak: batch, activations, optimizer temporaries",
    "validation_vae": "validation pipeline's own VAE",
    "inference": "validation peak: transformer (CFG batch 2) or VAE decode",
}


@functools.lru_cache(maxsize=64)
def _validation_terms(setup: TrainingSetup) -> dict[str, int] | None:
    latent = validation_latent(setup)
    if latent is None:
        return None
    weights = transformer_bytes(setup)
    states, _ = optimizer_state_bytes(setup, weights)
    inference = _extrapolate(
        lambda n: step_activation_peak(setup, latent, 2, n, train=False), setup.num_layers, _FIRST_DEPTH
    )
    decode = vae_decode_peak(setup, latent)
    return {
        "transformer": weights.base,
        "lora": weights.lora,
        "optimizer": states,
        "text_encoder": text_encoder_bytes(setup),  # the pipeline moves it to the device
        "vae": vae_bytes(setup) if setup.vae_on_device else 0,
        "validation_vae": vae_bytes(setup),
        "inference": max(inference, decode),
    }


def estimate(setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int = 1) -> MemoryEstimate:
    """The estimate for one batch of ``batch_size`` samples of latent shape ``(frames, h, w)``."""
    weights = transformer_bytes(setup)
    states, step_temporaries = optimizer_state_bytes(setup, weights)
    activations = _extrapolate(lambda b: activation_peak(setup, latent, b), batch_size)
    terms = {
        "transformer": weights.base,
        "lora": weights.lora,
        "lora_grads": weights.lora,
        "optimizer": states,
        "text_encoder": text_encoder_bytes(setup) if setup.text_encoder_on_device else 0,
        "vae": vae_bytes(setup) if setup.vae_on_device else 0,
        "activations": max(activations, step_temporaries),
    }
    return MemoryEstimate(tuple(latent), int(batch_size), terms, _validation_terms(setup))


def largest_batch(
    setup: TrainingSetup,
    latent: tuple[int, int, int],
    budget: int,
    margin: float = DEFAULT_MARGIN,
    limit: int = 256,
) -> int:
    """The largest batch whose estimated peak stays within ``budget x (1 - margin)``; 0 if none."""
    allowed = budget * (1 - margin)
    if estimate(setup, latent, 1).peak > allowed:
        return 0
    one, two = estimate(setup, latent, 1), estimate(setup, latent, 2)
    per_sample = max(1, two.train_peak - one.train_peak)
    fixed = one.train_peak - per_sample
    size = max(1, min(limit, int((allowed - fixed) // per_sample)))
    return size


def _largest_fitting(candidates: list, fits: Callable[[Any], bool]) -> Any:
    """The first of ``candidates`` (largest first, memory falling along the list) that fits, by
    binary search; None when none does."""
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            high = middle
        else:
            low = middle + 1
    return candidates[low] if low < len(candidates) else None


def advice(
    setup: TrainingSetup, latent: tuple[int, int, int], budget: int, margin: float = DEFAULT_MARGIN
) -> str:
    """What would make one sample of this shape fit the budget, tried in order of cost to the run."""
    allowed = budget * (1 - margin)
    frames, height, width = latent
    tips: list[str] = []
    if (
        not setup.gradient_checkpointing
        and estimate(replace(setup, gradient_checkpointing=True), latent).peak <= allowed
    ):
        tips.append("--gradient_checkpointing")
    if (
        setup.validation is not None
        and estimate(replace(setup, validation=None), latent).train_peak <= allowed
    ):
        tips.append("no --validation_prompt (the validation pipeline is the peak)")
    if (
        setup.text_encoder_on_device
        and estimate(replace(setup, text_encoder_on_device=False), latent).peak <= allowed
    ):
        tips.append("cached prompt embeddings (latent_cache: the text encoder leaves the device)")
    model = setup.model
    step = model.patch_size_t or 1
    counts = [f for f in range(frames - step, 0, -step)]  # fewer latent frames, largest first
    fits = _largest_fitting(counts, lambda f: estimate(setup, (f, height, width)).peak <= allowed)
    if fits is not None:
        tips.append(f"at most {(fits - 1) * model.temporal_compression_ratio + 1} frames")
    scales = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25]

    def scaled(scale: float) -> tuple[int, int]:
        return (
            max(2, int(height * math.sqrt(scale)) // 2 * 2),
            max(2, int(width * math.sqrt(scale)) // 2 * 2),
        )

    scale = _largest_fitting(scales, lambda s: estimate(setup, (frames, *scaled(s))).peak <= allowed)
    if scale is not None:
        h, w = scaled(scale)
        tips.append(f"an area of at most {w * VAE_SPATIAL}x{h * VAE_SPATIAL} ({scale:.0%} of the pixels)")
    return ", or ".join(tips) if tips else "a smaller model or a larger budget"


def parse_bytes(text: str) -> int:
    """``24GiB``, ``24GB``, ``80G``, ``2.5TiB``, ``24000000000`` -> bytes (G = GiB, GB = 10^9)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", str(text).lower())
    if not match:
        raise UsageError(f"a memory size is a number with a unit, such as 24GiB or 80GB, not {text!r}")
    number, unit, binary, byte = match.groups()
    power = "kmgt".index(unit) + 1 if unit else 0
    base = 1000 if (byte and not binary) else 1024
    value = int(float(number) * base**power)
    if value <= 0:
        raise UsageError(f"a memory size must be positive, not {text!r}")
    return value


def format_bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / GiB:.1f} GiB"
