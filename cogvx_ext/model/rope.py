"""Position embeddings for any latent shape: the rotary embedding and the 5b-I2V learned table.

Pure functions of the model's positional settings (``ModelInfo``) and a latent shape; the
plugins ``rope_rescale`` and ``posemb_adapt`` decide when they are used.

Grids, in tokens, for a latent shape ``(F, H, W)`` (the tensor that reaches the transformer):

* the token grid ``(n_t, n_h, n_w) = (ceil(F / p_t), H // p, W // p)`` (``p_t = 1`` for 1.0);
* the base grid ``(b_t, b_h, b_w)`` the model's config describes: ``sample_height // p``,
  ``sample_width // p`` and the tokens of ``sample_frames``: 13 x 30 x 45 for the 1.0 models
  (49 frames at 480x720), 11 x 150 x 150 for 1.5 (81 frames; 150 patches is the 2400 px edge of
  the 1.5 position table, not a training size).

Rotary modes (``MODES``); every mode returns float32 ``(cos, sin)`` of shape
``[n_t * n_h * n_w, attention_head_dim]`` laid out as diffusers' ``get_3d_rotary_pos_embed``
lays them out (time, height, width; head dims split 1/4 time, 3/8 height, 3/8 width):

``pipeline``
    Exactly what ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` (and the I2V
    pipeline's copy) computes for ``height = 8 H``, ``width = 8 W``, ``num_frames = F``: for 1.0
    the grid is fitted by aspect inside the base grid (``get_resize_crop_region_for_grid``) and
    its positions are spread over that region (``linspace``), so every size reuses the trained
    position range; for 1.5 the positions are the integers ``0..n-1`` on each axis
    (``grid_type="slice"``), which the pipeline cannot serve beyond ``b_h x b_w`` (2400 px):
    that raises here. ``base`` must not be given (the pipeline reads the config).
``extrapolate``
    Integer positions ``0..n-1`` on every axis, ``theta = 10000``, no fitting to the base. For 1.5
    this equals ``pipeline`` wherever the pipeline works and goes on beyond 2400 px; for 1.0 it
    generally differs from ``pipeline`` (equal at the base grid itself, where the pipeline's
    ``linspace`` positions are the integers too).
``interpolate``
    Positions ``i / s``: a grid larger than the base is squeezed into the base's position range;
    a grid that fits inside the base keeps integer positions (as ``extrapolate``). The two spatial
    axes share ``s = max(1, n_h / b_h, n_w / b_w)``, so a patch stays square in position space
    (the 1.0 pipeline's fit keeps the aspect the same way); time has its own
    ``s_t = max(1, n_t / b_t)``.
``ntk``
    Integer positions, with each axis' frequency base raised the NTK-aware way:
    ``theta = 10000 * s ** (d / (d - 2))`` where ``d`` is that axis' rotary width
    (``head_dim / 4`` for time, ``3 head_dim / 8`` for height and width) and ``s`` as in
    ``interpolate``. The highest frequency is unchanged and the lowest is slowed by exactly
    ``s``: fine detail extrapolates, coarse layout interpolates. Within the base ``s = 1`` and it
    equals ``extrapolate``.

``base`` (``interpolate`` and ``ntk``) replaces the config's base with a latent shape
``(frames, height, width)``, e.g. the largest size trained on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cogvx_ext.model.facts import ModelInfo

MODES = ("pipeline", "extrapolate", "interpolate", "ntk")
THETA = 10000.0
# A per-shape cache: buckets give a handful of shapes, and an entry of the real 5b at
# 1360x768x13 latents is ~27 MB, so a bounded cache is enough and stays affordable on a GPU.
CACHE_SIZE = 16

Grid = tuple[int, int, int]


def token_grid(model: ModelInfo, latent_shape: Sequence[int]) -> Grid:
    """``(n_t, n_h, n_w)``: the tokens the transformer makes of a latent ``(frames, height, width)``."""
    frames, height, width = (int(x) for x in latent_shape)
    pt = model.patch_size_t or 1
    return ((frames + pt - 1) // pt, height // model.patch_size, width // model.patch_size)


def base_grid(model: ModelInfo, base: Sequence[int] | None = None) -> Grid:
    """The token grid of ``base`` (a latent shape), or of the config's sample size when None."""
    if base is None:
        base = (model.latent_frames(model.sample_frames), model.sample_height, model.sample_width)
    return token_grid(model, base)


def axis_dims(head_dim: int) -> Grid:
    """Rotary widths of the time, height and width axes, as ``get_3d_rotary_pos_embed`` splits them."""
    return head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3


def rotary_embedding(
    model: ModelInfo,
    latent_shape: Sequence[int],
    device: torch.device | str | None,
    mode: str = "pipeline",
    base: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary embedding ``(cos, sin)`` for one latent shape, computed per ``mode`` (see the module doc).

    Results are cached per (model, shape, device, mode, base); the same tensors are returned for
    the same key, so callers must not modify them in place.

    :param model: positional settings of the transformer.
    :param latent_shape: ``(frames, height, width)`` of the latents that reach the transformer
        (for 1.5 the frame count already even).
    :param device: where the tensors live.
    :param mode: one of ``MODES``.
    :param base: a latent shape to use as the base grid instead of the config's (not for ``pipeline``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown rope mode {mode!r}; choose one of {', '.join(MODES)}")
    if not model.rotary:
        raise ValueError(f"model {model.name} does not use rotary position embeddings")
    if mode == "pipeline" and base is not None:
        raise ValueError(
            "rope mode 'pipeline' takes its base from the model config; base is for the other modes"
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(int(x) for x in latent_shape)
    base = tuple(int(x) for x in base) if base is not None else None
    return _rotary_embedding_cached(model, shape, device, mode, base)


def clear_cache() -> None:
    _rotary_embedding_cached.cache_clear()


def default_rotary_embedding(
    model: ModelInfo, latent_shape: Sequence[int], device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What a forward gets when no plugin chooses its RoPE: the pipeline's, at the batch's shape;
    ``None`` for a model without RoPE."""
    if not model.rotary:
        return None
    return rotary_embedding(model, latent_shape, device, mode="pipeline")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _rotary_embedding_cached(
    model: ModelInfo, latent_shape: Grid, device: torch.device, mode: str, base: Grid | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "pipeline":
        return _pipeline_rope(model, latent_shape, device)
    grid = token_grid(model, latent_shape)
    n_t, n_h, n_w = grid
    b_t, b_h, b_w = base_grid(model, base)
    s_space = max(1.0, n_h / b_h, n_w / b_w)
    s_time = max(1.0, n_t / b_t)
    dims = axis_dims(model.attention_head_dim)
    scales = (s_time, s_space, s_space)
    axes = []
    for n, d, s in zip(grid, dims, scales):
        positions = torch.arange(n, device=device, dtype=torch.float32)
        if mode == "interpolate" and s > 1.0:
            positions = positions / s
        theta = ntk_theta(s, d) if mode == "ntk" else THETA
        axes.append(_axis_rope(d, positions, theta))
    return _combine(grid, axes)


def ntk_theta(scale: float, dim: int) -> float:
    """The NTK-aware frequency base for a grid ``scale`` times the base on an axis of rotary width ``dim``."""
    if scale <= 1.0:
        return THETA
    return THETA * math.pow(scale, dim / (dim - 2) if dim > 2 else 1.0)


def _pipeline_rope(
    model: ModelInfo, latent_shape: Grid, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # The same calls, with the same arguments, as CogVideoX(ImageToVideo)Pipeline.
    # _prepare_rotary_positional_embeddings(height=8H, width=8W, num_frames=F): its grid is
    # (8H) // (8p) == H // p, so the result is bit-identical.
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    frames, height, width = latent_shape
    grid_h, grid_w = height // model.patch_size, width // model.patch_size
    base_h, base_w = model.sample_height // model.patch_size, model.sample_width // model.patch_size
    if model.patch_size_t is None:
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        return get_3d_rotary_pos_embed(
            embed_dim=model.attention_head_dim,
            crops_coords=crops,
            grid_size=(grid_h, grid_w),
            temporal_size=frames,
            device=device,
        )
    if grid_h > base_h or grid_w > base_w:
        limit = f"{base_w * model.pixel_multiple}x{base_h * model.pixel_multiple}"
        raise ValueError(
            f"a {grid_w}x{grid_h} patch grid (WIDTHxHEIGHT) is beyond the {base_w}x{base_h} position table of CogVideoX 1.5 "
            f"({limit} px), where the pipeline cannot go; use rope mode extrapolate, interpolate or ntk"
        )
    return get_3d_rotary_pos_embed(
        embed_dim=model.attention_head_dim,
        crops_coords=None,
        grid_size=(grid_h, grid_w),
        temporal_size=(frames + model.patch_size_t - 1) // model.patch_size_t,
        grid_type="slice",
        max_size=(base_h, base_w),
        device=device,
    )


def _axis_rope(dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return get_1d_rotary_pos_embed(dim, positions, theta=theta, use_real=True)


def _combine(grid: Grid, axes: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    # The token order of get_3d_rotary_pos_embed (and of the patch embedding): time, then rows,
    # then columns; each token's vector is [time dims | height dims | width dims].
    n_t, n_h, n_w = grid
    (t_cos, t_sin), (h_cos, h_sin), (w_cos, w_sin) = axes

    def join(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        parts = [
            t[:, None, None, :].expand(-1, n_h, n_w, -1),
            h[None, :, None, :].expand(n_t, -1, n_w, -1),
            w[None, None, :, :].expand(n_t, n_h, -1, -1),
        ]
        return torch.cat(parts, dim=-1).view(n_t * n_h * n_w, -1)

    return join(t_cos, h_cos, w_cos), join(t_sin, h_sin, w_sin)


# ---------------------------------------------------------------------------------------------
# The learned positional table (CogVideoX 5b-I2V)


def adapt_learned_posemb(
    table: torch.Tensor, model: ModelInfo, latent_shape: Sequence[int], text_len: int
) -> torch.Tensor:
    """The learned positional table resampled for another latent grid; text rows untouched.

    ``table`` is ``CogVideoXPatchEmbed.pos_embedding``, ``[1, text_len + b_t * b_h * b_w, D]``:
    ``text_len`` text rows (zeros in the released model), then one row per video token in the
    order the patch embedding emits tokens, time-major then rows then columns (13 x 30 x 45 for
    5b-I2V). The result has ``text_len + n_t * n_h * n_w`` rows in the same order and the
    table's dtype and device. At the base grid the table itself is returned.

    * Height and width: the table of each frame is resized to ``n_h x n_w`` with bicubic
      interpolation, ``align_corners=False`` (antialiased when shrinking), as timm resamples ViT
      position tables: the picture keeps its field of view at another resolution, so each token
      takes the table's value at the same relative place.
    * Time: frames are one latent step apart whatever the clip length (the temporal scale of the
      table's sin-cos origin is 1), so a shorter clip takes the first ``n_t`` rows, as a prefix of
      a trained clip would. A longer clip has no rows to take: time is then linearly
      interpolated with ``align_corners=True`` so that the first (image-conditioned) and last
      frames keep their rows.

    :param table: the learned table.
    :param model: positional settings of the transformer (the base grid comes from its config).
    :param latent_shape: ``(frames, height, width)`` of the latents that reach the transformer.
    :param text_len: the number of text rows at the start of the table (``max_text_seq_length``).
    """
    b_t, b_h, b_w = base_grid(model)
    n_t, n_h, n_w = token_grid(model, latent_shape)
    rows, dim = table.shape[1], table.shape[2]
    if rows != text_len + b_t * b_h * b_w:
        raise ValueError(
            f"positional table has {rows} rows, expected {text_len} text rows + {b_t}x{b_h}x{b_w} video rows (frames x height x width)"
        )
    if (n_t, n_h, n_w) == (b_t, b_h, b_w):
        return table
    # Resample in at least float32 (bfloat16 tables lose too much in bicubic weights).
    work_dtype = torch.promote_types(table.dtype, torch.float32)
    video = table[0, text_len:].reshape(b_t, b_h, b_w, dim).to(work_dtype)
    if n_t <= b_t:
        video = video[:n_t]
    else:
        flat = video.reshape(b_t, -1).T.unsqueeze(0)  # [1, h*w*D, t]: interpolate along t
        flat = F.interpolate(flat, size=n_t, mode="linear", align_corners=True)
        video = flat[0].T.reshape(n_t, b_h, b_w, dim)
    if (n_h, n_w) != (b_h, b_w):
        planes = video.permute(0, 3, 1, 2)  # [t, D, h, w]
        shrinking = n_h < b_h or n_w < b_w
        planes = F.interpolate(
            planes, size=(n_h, n_w), mode="bicubic", align_corners=False, antialias=shrinking
        )
        video = planes.permute(0, 2, 3, 1)
    video = video.reshape(1, n_t * n_h * n_w, dim).to(table.dtype)
    return torch.cat([table[:, :text_len], video], dim=1)
