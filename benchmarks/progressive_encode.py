"""Progressive stages: encode every stage's latents up front, or each stage when it starts?

What is measured (issue 6)
    A tiny CogVideoX-5b (``cogvx_ext.testing``: real VAE architecture, few channels) and
    ``--clips`` synthetic clips (16:9 and 9:16, 33 frames at 8 fps) are planned with
    ``aspect_bucket,progressive_resize`` and the schedule ``--stages`` (default
    ``144x256:0,224x400:100,288x512:300``: a quarter, then about 0.6, then all of the final area),
    through the same hooks and core functions training uses (``plan_samples``, then
    ``encode_samples`` calling ``cogvx_encode_sample``: decode straight to the bucket, VAE
    encode, keep the posterior on the CPU). Each stage's samples are encoded on their own; we
    record the wall time and the bytes of latents kept, per stage.

    up front    (what cogvx-ext does) all stages before step 0: the wait before training is the
                sum of the stages' times, the latents held in CPU memory the sum of theirs.
    at change   each stage encoded when it starts: the same total time, split into pauses at the
                boundaries; only the current stage's latents held. The scripts encode once,
                before their loop, so this would need the VAE kept on the accelerator all run
                and its encoder's activations on top of training's at every boundary.

    python benchmarks/progressive_encode.py [--clips 12] [--stages ...] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(model_dir: Path, data: Path, stages: str, frames: int) -> list[dict]:
    import torch
    from diffusers import AutoencoderKLCogVideoX

    from cogvx_ext.data.encoding import encode_samples
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.data.stages import stage_of
    from cogvx_ext.script.data_formats import read_listing
    from cogvx_ext.script.offline import script_data_parser, start_offline_run
    from cogvx_ext.script.seams.dataset import ScriptEncoding

    argv = [
        "--pretrained_model_name_or_path", str(model_dir), "--instance_data_root", str(data),
        "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", "288",
        "--width", "512", "--max_num_frames", str(frames), "--fps", "8",
        "--plugins", "aspect_bucket,rope_rescale,progressive_resize", "--progressive_stages", stages,
    ]  # fmt: skip
    run = start_offline_run(
        script_data_parser("bench", ""), argv, default_plugins="aspect_bucket,rope_rescale"
    )
    entries, _ = read_listing(data, "prompts.txt", "videos.txt")
    samples, skipped = plan_samples(run.hook, entries, run.context, progress=False)
    assert not skipped, skipped
    vae = AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae")
    vae.requires_grad_(False)
    holder = type("Run", (), {"hook": run.hook, "args": run.args})()
    run.pm.register(ScriptEncoding(holder), name="cogvx_ext.script_encoding")
    rows = []
    for index, stage in enumerate(run.context.stages):
        mine = [s for s in samples if stage_of(s) == index]
        started = time.perf_counter()
        with torch.no_grad():
            posteriors, failed = encode_samples(run.hook, mine, vae, "t2v", run.context, 0, 1, progress=False)
        seconds = time.perf_counter() - started
        assert not failed
        kept = sum(p.parameters.numel() * p.parameters.element_size() for p in posteriors)
        shapes = sorted({(s.target.width, s.target.height) for s in mine})
        rows.append(
            {"stage": index, "size": stage.label, "start_step": stage.start_step, "samples": len(mine),
             "shapes": len(shapes), "seconds": seconds, "latent_bytes": kept}
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--stages", default="256x144:0,400x224:100,512x288:300")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)

    import torch

    from cogvx_ext.testing import build_tiny_model, write_dataset

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp), "5b")
        sizes = [(512, 288, opts.frames) if i % 3 else (288, 512, opts.frames) for i in range(opts.clips)]
        data = write_dataset(Path(tmp) / "data", sizes, prompts=[f"clip {i}" for i in range(opts.clips)])
        runs = [measure(model_dir, data, opts.stages, opts.frames) for _ in range(opts.repeats)]
    rows = runs[0]
    for row in rows:  # medians over the repeats
        row["seconds"] = statistics.median(r[row["stage"]]["seconds"] for r in runs)
    total_s = sum(r["seconds"] for r in rows)
    total_b = sum(r["latent_bytes"] for r in rows)
    final = rows[-1]
    summary = {
        "up_front": {"wait_before_step_0_s": total_s, "latents_held_bytes": total_b},
        "at_change": {
            "wait_before_step_0_s": rows[0]["seconds"],
            "pauses_s": [r["seconds"] for r in rows[1:]],
            "latents_held_peak_bytes": max(r["latent_bytes"] for r in rows),
        },
        "final_stage_only": {"seconds": final["seconds"], "latent_bytes": final["latent_bytes"]},
        "earlier_stages_cost": {
            "time_vs_final": (total_s - final["seconds"]) / final["seconds"],
            "memory_vs_final": (total_b - final["latent_bytes"]) / final["latent_bytes"],
        },
    }
    if opts.json:
        print(
            json.dumps(
                {"stages": rows, "summary": summary, "clips": opts.clips, "frames": opts.frames}, indent=2
            )
        )
        return 0
    print(f"{opts.clips} clips, {opts.frames} frames, stages {opts.stages} (median of {opts.repeats})")
    print(f"  {'stage':<6}{'size':>9}{'from step':>11}{'samples':>9}{'encode s':>10}{'latents MiB':>13}")
    for r in rows:
        print(
            f"  {r['stage']:<6}{r['size']:>9}{r['start_step']:>11}{r['samples']:>9}{r['seconds']:>10.2f}"
            f"{r['latent_bytes'] / 2**20:>13.2f}"
        )
    print(
        f"up front:  {total_s:.2f} s before step 0, {total_b / 2**20:.2f} MiB of latents held "
        f"(+{summary['earlier_stages_cost']['time_vs_final']:.0%} time and "
        f"+{summary['earlier_stages_cost']['memory_vs_final']:.0%} memory over the final stage alone)"
    )
    print(
        f"at change: {rows[0]['seconds']:.2f} s before step 0, pauses of "
        f"{', '.join(f'{s:.2f}' for s in summary['at_change']['pauses_s'])} s at the boundaries, "
        f"{summary['at_change']['latents_held_peak_bytes'] / 2**20:.2f} MiB peak latents"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
