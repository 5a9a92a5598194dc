"""One training step traced with fake tensors, every live storage counted (the activation peak)."""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.model.memory.setup import LORA_TARGETS, TrainingSetup, _plain
from cogvx_ext.model.memory.store import stored


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


def _latent_for_model(model: ModelInfo, latent: tuple[int, int, int]) -> tuple[int, int, int]:
    frames, height, width = latent
    if model.patch_size_t:
        frames += -frames % model.patch_size_t  # rope_rescale pads as the 1.5 pipelines do
    return frames, height, width


def traced_setup(setup: TrainingSetup) -> TrainingSetup:
    """The setup as far as a transformer trace sees it: what only changes resident bytes (the
    optimizer, where the text encoder and the VAE live, validation) set to one value, so that
    setups differing only there share their traces."""
    return replace(
        setup,
        text_encoder=TrainingSetup.text_encoder,
        vae=TrainingSetup.vae,
        optimizer="adamw",
        use_8bit_adam=False,
        text_encoder_on_device=True,
        vae_on_device=True,
        validation=None,
    )


@functools.lru_cache(maxsize=8)
def _fake_transformer(setup: TrainingSetup, layers: int):
    """A ``layers``-block copy of the transformer with fake weights, and its ``FakeTensorMode``:
    built once and traced at every shape (building it costs as much as a trace)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    transformer = _build_transformer(setup, _trace_config(setup, layers))
    mode = FakeTensorMode()
    _fake_module(transformer, mode)
    return transformer, mode


def step_activation_peak(
    setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int, layers: int, train: bool = True
) -> int:
    """Bytes above the resident weights, gradients and states at the peak of one step of a
    ``layers``-block copy of the transformer (``train``: forward and backward; else a no-grad
    forward, as in inference), traced with fake tensors."""
    return _step_activation_peak(
        traced_setup(setup), tuple(int(n) for n in latent), batch_size, layers, train
    )


@functools.lru_cache(maxsize=4096)
def _step_activation_peak(
    setup: TrainingSetup, latent: tuple[int, int, int], batch_size: int, layers: int, train: bool
) -> int:
    def trace() -> int:
        transformer, mode = _fake_transformer(setup, layers)
        return trace_step(transformer, setup, latent, batch_size, train, mode)

    fields = {k: v for k, v in setup.__dict__.items()}
    return stored("step", [fields, latent, batch_size, layers, train], trace)


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


@functools.lru_cache(maxsize=4)
def _fake_vae(vae_config: str, mixed_precision: str):
    """The VAE of this config with fake weights in the weight dtype, and its ``FakeTensorMode``."""
    import logging

    import torch
    from diffusers import AutoencoderKLCogVideoX
    from diffusers.utils import logging as diffusers_logging
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX.from_config(_plain(json.loads(vae_config)))
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(logging.ERROR)  # `.to(dtype)` warns about keep-in-fp32 modules
    try:
        vae.to({"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision])
    finally:
        diffusers_logging.set_verbosity(level)
    vae.requires_grad_(False)
    mode = FakeTensorMode()
    _fake_module(vae, mode)
    return vae, mode


# AutoencoderKLCogVideoX's tiling settings (enable_tiling's arguments and what it derives).
VAE_TILE_ATTRIBUTES = (
    "tile_sample_min_height",
    "tile_sample_min_width",
    "tile_latent_min_height",
    "tile_latent_min_width",
    "tile_overlap_factor_height",
    "tile_overlap_factor_width",
)


def vae_tile_settings(vae) -> tuple[tuple[str, float], ...]:
    """A VAE's tiling settings as a hashable tuple (for ``vae_encode_peak``)."""
    return tuple((name, getattr(vae, name)) for name in VAE_TILE_ATTRIBUTES if hasattr(vae, name))


def _vae_trace(setup_vae: str, mixed_precision: str, tiles, run) -> int:
    """Run ``run(vae, dtype)`` on the fake VAE (tiled when ``tiles`` is given: its settings, or
    ``()`` for the VAE's defaults) and return the peak bytes of the storages it made."""
    import torch

    vae, mode = _fake_vae(setup_vae, mixed_precision)
    saved = {name: getattr(vae, name) for name in (*VAE_TILE_ATTRIBUTES, "use_tiling") if hasattr(vae, name)}
    counter = LiveStorageCounter()
    counter.exclude(_module_tensors(vae))
    try:
        vae.use_tiling = tiles is not None
        for name, value in tiles or ():
            setattr(vae, name, value)
        with mode, counter, torch.no_grad():
            run(vae, _dtype_of(mixed_precision))
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)
    return counter.peak


def _dtype_of(mixed_precision: str):
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


@functools.lru_cache(maxsize=256)
def vae_decode_peak(setup: TrainingSetup, latent: tuple[int, int, int]) -> int:
    """Activation peak of decoding one video of this latent shape with a VAE without tiling."""
    import torch

    def decode(vae, dtype) -> None:
        vae.decode(torch.empty(1, int(vae.config.latent_channels), *latent, dtype=dtype))

    def trace() -> int:
        return _vae_trace(setup.vae, setup.mixed_precision, None, decode)

    return stored("vae_decode", [setup.vae, setup.mixed_precision, list(latent)], trace)


@functools.lru_cache(maxsize=256)
def vae_encode_peak(
    vae_config: str, mixed_precision: str, frames: int, height: int, width: int, tiles=None
) -> int:
    """Activation peak of encoding one video of ``frames`` x ``height`` x ``width`` pixels, as the
    scripts and the latent cache encode (one video at a time: slicing, which splits a batch, changes
    nothing), with the VAE's weights in the weight dtype. ``tiles``: None without tiling, else the
    VAE's tiling settings (``vae_tile_settings``; ``()`` for the defaults ``enable_tiling()`` sets)."""
    import torch

    def encode(vae, dtype) -> None:
        vae.encode(torch.empty(1, 3, frames, height, width, dtype=dtype))  # the posterior is made here

    def trace() -> int:
        return _vae_trace(vae_config, mixed_precision, tiles, encode)

    parts = [vae_config, mixed_precision, [frames, height, width], None if tiles is None else list(tiles)]
    return stored("vae_encode", parts, trace)


def validation_latent(setup: TrainingSetup) -> tuple[int, int, int] | None:
    if setup.validation is None:
        return None
    frames, height, width = setup.validation
    model = setup.model
    return _latent_for_model(model, model.latent_shape(frames, height, width))
