"""cogvx_ext.model.rope: the rotary modes against the diffusers pipelines' own function."""

from __future__ import annotations

import random

import pytest
import torch
from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from cogvx_ext.model import rope
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.testing import tiny_transformer_config

CPU = torch.device("cpu")

KINDS = ["5b", "5b-I2V", "1.5-5B", "1.5-5B-I2V"]  # the kinds with RoPE


@pytest.fixture(scope="module", params=KINDS)
def pipe(request):
    """A real pipeline object around a tiny transformer; the RoPE method reads only its config."""
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**tiny_transformer_config(request.param))
    pipeline_class = CogVideoXImageToVideoPipeline if "I2V" in request.param else CogVideoXPipeline
    pipe = pipeline_class(
        tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=None
    )
    assert pipe.vae_scale_factor_spatial == 8
    return pipe


def model_of(pipe) -> ModelInfo:
    return ModelInfo.from_config(pipe.transformer.config)


def random_shapes(model: ModelInfo, count: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Latent shapes with even sides, each followed by its transpose; 1.5 frame counts even."""
    rng = random.Random(seed)
    limit = 96  # latent side: big enough to go past the 1.0 base (60x90), small enough to be fast
    shapes = [(13, 60, 90), (13, 90, 60), (13, 72, 128), (13, 128, 72), (2, 2, 2)]
    while len(shapes) < count:
        frames = rng.randint(1, 22)
        height, width = 2 * rng.randint(1, limit // 2), 2 * rng.randint(1, limit // 2)
        shapes += [(frames, height, width), (frames, width, height)]
    if model.patch_size_t:
        shapes = [(f + f % 2, h, w) for f, h, w in shapes]
    return shapes


def assert_same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_pipeline_mode_is_bit_identical_to_the_pipeline(pipe):
    model = model_of(pipe)
    for frames, height, width in random_shapes(model, 24):
        expected = pipe._prepare_rotary_positional_embeddings(height * 8, width * 8, frames, CPU)
        got = rope.rotary_embedding(model, (frames, height, width), CPU)
        assert_same(got, expected)


def test_transposed_shape_gets_other_positions(pipe):
    model = model_of(pipe)
    landscape = rope.rotary_embedding(model, (2, 60, 90), CPU)
    portrait = rope.rotary_embedding(model, (2, 90, 60), CPU)
    assert landscape[0].shape == portrait[0].shape  # same token count ...
    assert not torch.equal(landscape[0], portrait[0])  # ... other positions


def test_cache_returns_the_same_tensors(pipe):
    model = model_of(pipe)
    first = rope.rotary_embedding(model, (2, 18, 32), CPU)
    assert rope.rotary_embedding(model, (2, 18, 32), "cpu") is first
    assert rope.rotary_embedding(model, (2, 18, 32), CPU, mode="ntk") is not first
    assert rope.rotary_embedding(model, (2, 32, 18), CPU) is not first


def expected_axis(
    model: ModelInfo, axis: int, positions: torch.Tensor, theta: float = rope.THETA
) -> torch.Tensor:
    dim = rope.axis_dims(model.attention_head_dim)[axis]
    return get_1d_rotary_pos_embed(dim, positions, theta=theta, use_real=True)[0]


def height_part(model: ModelInfo, cos: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The height dims of the tokens in the first frame's first column: one row per grid row."""
    d_t, d_h, _ = rope.axis_dims(model.attention_head_dim)
    return cos.view(*grid, -1)[0, :, 0, d_t : d_t + d_h]


def time_part(model: ModelInfo, cos: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    d_t = rope.axis_dims(model.attention_head_dim)[0]
    return cos.view(*grid, -1)[:, 0, 0, :d_t]


def beyond_base(model: ModelInfo) -> tuple[int, int, int]:
    # Two temporal tokens more than the base, twice the base height, and a narrow width so that
    # the tensors stay small.
    b_t, b_h, b_w = rope.base_grid(model)
    pt = model.patch_size_t or 1
    return (b_t * pt + 2 * pt, 2 * b_h * model.patch_size, 4)


def test_modes_match_their_definitions_beyond_the_base(pipe):
    model = model_of(pipe)
    shape = beyond_base(model)
    grid = rope.token_grid(model, shape)
    b_t, b_h, b_w = rope.base_grid(model)
    s_space = max(grid[1] / b_h, grid[2] / b_w)
    s_time = grid[0] / b_t
    assert s_space == 2 and s_time > 1
    rows = torch.arange(grid[1], dtype=torch.float32)
    frames = torch.arange(grid[0], dtype=torch.float32)
    d_t, d_h, _ = rope.axis_dims(model.attention_head_dim)
    others = ["extrapolate", "interpolate", "ntk"]
    results = {mode: rope.rotary_embedding(model, shape, CPU, mode=mode) for mode in others}

    cos = results["extrapolate"][0]
    assert torch.equal(height_part(model, cos, grid), expected_axis(model, 1, rows))
    assert torch.equal(time_part(model, cos, grid), expected_axis(model, 0, frames))

    cos = results["interpolate"][0]
    assert torch.equal(height_part(model, cos, grid), expected_axis(model, 1, rows / s_space))
    assert torch.equal(time_part(model, cos, grid), expected_axis(model, 0, frames / s_time))
    assert (grid[1] - 1) / s_space < b_h  # squeezed into the base's position range

    cos = results["ntk"][0]
    theta_h = rope.THETA * s_space ** (d_h / (d_h - 2))
    theta_t = rope.THETA * s_time ** (d_t / (d_t - 2))
    assert torch.equal(height_part(model, cos, grid), expected_axis(model, 1, rows, theta_h))
    assert torch.equal(time_part(model, cos, grid), expected_axis(model, 0, frames, theta_t))

    for i, a in enumerate(others):
        for b in others[i + 1 :]:
            assert not torch.equal(results[a][0], results[b][0]), (a, b)
    if model.patch_size_t:
        with pytest.raises(ValueError, match="beyond"):  # the 1.5 pipeline has no positions there
            rope.rotary_embedding(model, shape, CPU)
    else:
        pipeline = rope.rotary_embedding(model, shape, CPU)
        for mode in others:
            assert not torch.equal(pipeline[0], results[mode][0]), mode


def test_modes_inside_the_base(pipe):
    model = model_of(pipe)
    for shape in [(2, 8, 14), (4, 60, 90), (2, 60, 40)]:
        modes = {mode: rope.rotary_embedding(model, shape, CPU, mode=mode) for mode in rope.MODES}
        # Within the base every scale is 1: interpolate and ntk are extrapolate.
        assert_same(modes["interpolate"], modes["extrapolate"])
        assert_same(modes["ntk"], modes["extrapolate"])
        if model.patch_size_t:
            assert_same(modes["pipeline"], modes["extrapolate"])  # 1.5 slice: integer positions
    if not model.patch_size_t:
        # 1.0 at its base grid: the pipeline's linspace positions are the integers.
        base = (13, model.sample_height, model.sample_width)
        assert_same(
            rope.rotary_embedding(model, base, CPU), rope.rotary_embedding(model, base, CPU, "extrapolate")
        )
        # ... and below it the pipeline spreads the grid over the base, the others do not.
        small = (2, 8, 14)
        assert not torch.equal(rope.rotary_embedding(model, small, CPU)[0], modes["extrapolate"][0])


def test_base_argument_moves_the_base(pipe):
    model = model_of(pipe)
    shape = (2, 32, 32)
    grid = rope.token_grid(model, shape)
    cos = rope.rotary_embedding(model, shape, CPU, mode="interpolate", base=(2, 16, 16))[0]
    rows = torch.arange(grid[1], dtype=torch.float32)
    assert torch.equal(height_part(model, cos, grid), expected_axis(model, 1, rows / 2))
    with pytest.raises(ValueError, match="base"):
        rope.rotary_embedding(model, shape, CPU, mode="pipeline", base=(2, 16, 16))


def test_bad_mode_and_non_rotary_model():
    model = ModelInfo.from_config(tiny_transformer_config("5b"))
    with pytest.raises(ValueError, match="unknown rope mode"):
        rope.rotary_embedding(model, (2, 8, 8), CPU, mode="yarn")
    sincos = ModelInfo.from_config(tiny_transformer_config("2b"))
    with pytest.raises(ValueError, match="rotary"):
        rope.rotary_embedding(sincos, (2, 8, 8), CPU)
