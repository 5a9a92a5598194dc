"""torch.compile with buckets (cogvx_ext.script.compiling): the transformer's blocks compiled
regionally, compilations bounded and logged, none lost silently, the compile cache kept.

One run compiles with inductor under `accelerate launch --dynamo_backend inductor`, as a user
would; the static-shapes run uses dynamo's "eager" backend (`accelerate config` as the environment
sets it): dynamo traces, guards and recompiles per shape exactly as under inductor, without
inductor's code generation, seconds per shape on the CPU (benchmarks/compile_buckets.py measures
inductor).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e import RECORDER, events_of, mixed_dataset, ok, script_args, training_shapes

from cogvx_ext.script.compiling import CompileWatch, compiled_graphs

# Ten clips, five aspects at two lengths: ten latent shapes, more than dynamo's default recompile
# limit of 8.
TEN_ASPECTS = [
    (256, 144, 17), (144, 256, 17), (192, 144, 17), (160, 160, 17), (336, 144, 17),
    (256, 144, 9), (144, 256, 9), (192, 144, 9), (160, 160, 9), (336, 144, 9),
]  # fmt: skip
# The blocks see a latent shape as its token count (F * H/2 * W/2), and transposed aspects share
# one: three lengths of four aspects, for more token counts than the default limit.
TWELVE_TOKEN_COUNTS = [
    (w, h, n) for n in (9, 13, 17) for w, h in [(256, 144), (192, 144), (160, 160), (336, 144)]
]
HEADER = (
    r"torch.compile \((\w+)\) regionally, (\d+) transformer block\(s\) sharing one compiled block, "
    r"(\d+) latent shape\(s\): ([^;]+); recompile limit (\d+)"
)
COMPILED = (
    r"(\d+) new graph\(s\) at step (\S+) \(latent FxHxW ([^)]*)\) in ([\d.]+) s, (\d+) in all "
    r"\((\d+) of them CogVideoXBlock's\)"
)


def bucketed_run(tiny_models, tmp_path, clips=TEN_ASPECTS):
    data = mixed_dataset(tmp_path / "data", clips)
    return script_args(
        tiny_models["5b"], data, tmp_path / "out", "--plugins", f"{RECORDER},aspect_bucket,rope_rescale",
        "--recorder_out", tmp_path / "ev", frames=17, steps=len(clips),
    )  # fmt: skip


def tokens(latent_shape) -> int:
    f, h, w = latent_shape
    return f * (h // 2) * (w // 2)


def compilations(log: str) -> list[tuple[int, str, float, int]]:
    """(new graphs, latent shapes, compile seconds, graphs in all) of each logged compilation; every
    graph is the block's (the whole model, or a part of it outside the blocks, compiled would add
    graphs that are not)."""
    found = re.findall(COMPILED, log)
    assert all(total == block for *_, total, block in found), found
    return [(int(n), shapes, float(s), int(total)) for n, _, shapes, s, total, _ in found]


def no_limit_hit(log: str) -> None:
    assert "hit config.recompile_limit" not in log and "EAGERLY" not in log, log[
        -3000:
    ]  # no bucket ran eagerly


@pytest.mark.slow
def test_buckets_compile_one_block_under_accelerate_launch_inductor(tiny_models, t2v_trainer, tmp_path):
    """The done-when of issue 24: 9+ shapes under `accelerate launch --dynamo_backend inductor`
    train without hitting a limit; the blocks compile regionally, so the graphs are far fewer than
    the shapes (the whole model compiled static would make one per shape); the inductor cache is
    where COGVX_EXT_COMPILE_CACHE says."""
    cache = tmp_path / "compile-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGVX_EXT", "TORCHINDUCTOR"))}
    env.update(
        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", ACCELERATE_USE_CPU="1", COGVX_EXT_COMPILE_CACHE=str(cache)
    )
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_machines", "1", "--cpu",
                  "--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "inductor"]  # fmt: skip
    command = [*accelerate, str(t2v_trainer), *map(str, bucketed_run(tiny_models, tmp_path))]
    result = ok(subprocess.run(command, env=env, capture_output=True, text=True, timeout=900))
    shapes = {tuple(s) for s in training_shapes(events_of(tmp_path / "ev"))}
    assert len(shapes) >= 9, shapes
    log = result.stderr
    header = re.search(HEADER, log)
    assert header, log[-3000:]
    assert header[1] == "inductor" and int(header[2]) >= 1 and int(header[3]) >= len(shapes)
    assert "dynamic" in header[4]
    no_limit_hit(log)
    compiled = compilations(log)
    assert compiled and all(seconds > 0 for _, _, seconds, _ in compiled), compiled
    # Static first shape (training, and the first block's strided input), one dynamic recompile
    # each: a handful of graphs for ten shapes, not one (or more) per shape.
    assert compiled[-1][3] < len(shapes), compiled
    assert list((cache).glob("**/fxgraph")), sorted(p.name for p in cache.glob("*"))


@pytest.mark.slow
def test_static_shapes_more_than_the_recompile_limit_all_compile(tiny_models, t2v_trainer, train, tmp_path):
    """COGVX_EXT_COMPILE_STATIC=1: every token count compiles its own static block graph and the
    recompile limit, raised to the plan's shapes, is never hit (the default limit is 8)."""
    env = {"ACCELERATE_DYNAMO_BACKEND": "EAGER", "COGVX_EXT_COMPILE_STATIC": "1"}
    env["COGVX_EXT_COMPILE_CACHE"] = str(tmp_path / "compile-cache")  # not the user's
    result = ok(train(t2v_trainer, bucketed_run(tiny_models, tmp_path, TWELVE_TOKEN_COUNTS), env=env))
    shapes = {tuple(s) for s in training_shapes(events_of(tmp_path / "ev"))}
    counts_of_tokens = {tokens(s) for s in shapes}
    assert len(counts_of_tokens) > 8, shapes  # the test needs more block graphs than the default limit
    log = result.stderr
    header = re.search(HEADER, log)
    assert header, log[-3000:]
    assert header[1] == "eager" and int(header[3]) >= len(shapes) and int(header[5]) >= len(shapes)
    assert header[4].startswith("static")
    no_limit_hit(log)
    counts = [total for *_, total in compilations(log)]
    # A compilation logged at every new token count, and no more than the shapes allow.
    assert len(counts) >= len(counts_of_tokens) and counts == sorted(counts), counts
    assert len(counts_of_tokens) <= counts[-1] <= 4 * len(shapes)
    logged = {s for _, shapes_, *_ in compilations(log) for s in shapes_.split(", ")}
    assert {tokens(map(int, s.split("x"))) for s in logged} == counts_of_tokens, logged


def test_a_recompile_limit_hit_is_said_plainly(caplog):
    import torch._dynamo

    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2, automatic_dynamic_shapes=True):
        before = compiled_graphs()

        @torch.compile(backend="eager")
        def double(x):
            return x * 2

        with caplog.at_level(logging.INFO, logger="cogvx_ext.compile"):
            watch = CompileWatch("eager", shapes=2)
            try:
                for n in range(2, 7):
                    double(torch.ones(n, n + 1))
            finally:
                watch.close()
    torch._dynamo.reset()
    lines = [r.getMessage() for r in caplog.records if r.name == "cogvx_ext.compile"]
    assert any("the whole transformer, 2 latent shape(s)" in line for line in lines), lines
    assert any("runs EAGERLY" in line and "recompile_limit" in line for line in lines), lines
    assert compiled_graphs() > before
