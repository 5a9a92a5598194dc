"""torch.compile with buckets (cogvx_ext.script.compiling): bounded compilations, none lost silently.

The training test compiles through accelerate's dynamo backend, as `accelerate config` sets it,
with dynamo's "eager" backend: dynamo traces, guards and recompiles per shape exactly as under
inductor, without inductor's minutes of code generation on the CPU (benchmarks/compile_buckets.py
measures inductor).
"""

from __future__ import annotations

import logging
import re

import pytest
from test_e2e import RECORDER, events_of, mixed_dataset, ok, script_args, training_shapes

from cogvx_ext.script.compiling import CompileWatch, compiled_graphs

# Ten clips, five aspects at two lengths: ten latent shapes, more than dynamo's default recompile
# limit of 8.
TEN_ASPECTS = [
    (256, 144, 17), (144, 256, 17), (192, 144, 17), (160, 160, 17), (336, 144, 17),
    (256, 144, 9), (144, 256, 9), (192, 144, 9), (160, 160, 9), (336, 144, 9),
]  # fmt: skip


@pytest.mark.slow
def test_more_buckets_than_the_recompile_limit_all_compile(tiny_models, t2v_trainer, train, tmp_path):
    data = mixed_dataset(tmp_path / "data", TEN_ASPECTS)
    args = script_args(
        tiny_models["5b"], data, tmp_path / "out", "--plugins", f"{RECORDER},aspect_bucket,rope_rescale",
        "--recorder_out", tmp_path / "ev", frames=17, steps=len(TEN_ASPECTS),
    )  # fmt: skip
    result = ok(train(t2v_trainer, args, env={"ACCELERATE_DYNAMO_BACKEND": "EAGER"}))
    shapes = {tuple(s) for s in training_shapes(events_of(tmp_path / "ev"))}
    assert len(shapes) > 8, shapes  # the test needs more shapes than the default limit
    log = result.stderr
    header = re.search(r"torch.compile \(eager\) with (\d+) latent shape\(s\).*recompile limit (\d+)", log)
    assert header, log[-3000:]
    assert int(header[1]) >= len(shapes) and int(header[2]) >= len(shapes)
    assert "hit config.recompile_limit" not in log and "EAGERLY" not in log  # no bucket fell back
    counts = [int(n) for n in re.findall(r"new graph\(s\) at step \S+, (\d+) in all", log)]
    # A compilation logged at every new shape, and no more than the shapes allow.
    assert len(counts) >= len(shapes) and counts == sorted(counts), counts
    assert counts[-1] <= 4 * len(shapes)


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
    assert any("with 2 latent shape(s)" in line for line in lines)
    assert any("runs EAGERLY" in line and "recompile_limit" in line for line in lines), lines
    assert compiled_graphs() > before
