"""DeepSpeed ZeRO-2 and ZeRO-3 with buckets on a machine with GPUs (issue 14).

``tests/test_deepspeed.py`` runs one process and two ranks on a CPU, through a shim that gives
accelerate the gloo backend it does not pick there (README, "DeepSpeed"). This script runs the
same on GPUs, with nccl and no shim: ``--num_processes`` ranks (default 2) per ZeRO stage,
through ``accelerate launch`` with the built-in DeepSpeed plugin (the configs are written next to
the runs and printed), a tiny 5b model and mixed-aspect clips, the built-in plugins and the test
recorder (tests/plugins/recorder.py):

1. a whole run of ``--steps`` steps;
2. a run that stops at a checkpoint, then one that resumes from it: the batches (latent shapes
   per rank and step) must equal the whole run's;
3. the LoRA of the whole run loads with ``cogvx_ext.inference.prepare_pipeline`` and is trained
   (non-zero ``lora_B``).

    pip install deepspeed
    python benchmarks/deepspeed_check.py [--stages 2,3] [--num_processes 2] [--trainer SCRIPT]

The trainer is ``--trainer``, else ``$COGVX_EXT_TRAINER``, else cogvx-ext's minimal trainer. Exits 1
when a stage fails; prints one line per stage and the tail of a failing run's log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDER = f"{REPO / 'tests' / 'plugins' / 'recorder.py'}:Recorder"
CLIPS = [(256, 144, 17), (144, 256, 17), (192, 144, 17), (160, 160, 17), (336, 144, 17), (256, 144, 17)]


def config_text(stage: int, processes: int) -> str:
    return (
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
        f"  zero_stage: {stage}\n  gradient_accumulation_steps: 1\n  offload_optimizer_device: none\n"
        "  offload_param_device: none\n  zero3_init_flag: false\n  zero3_save_16bit_model: true\n"
        f"mixed_precision: 'no'\nnum_machines: 1\nnum_processes: {processes}\nmachine_rank: 0\nuse_cpu: false\n"
    )


def shapes(directory: Path) -> dict[str, list]:
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(directory / name, encoding="utf-8") as f:
            events = [json.loads(line) for line in f]
        out[name] = [e["latent_shape"] for e in events if e["event"] == "transformer_forward" and e["grad"]]
    return out


def check_stage(
    stage: int, processes: int, trainer: str, model: Path, data: Path, work: Path, steps: int
) -> str:
    config = work / f"zero{stage}.yaml"
    config.write_text(config_text(stage, processes), encoding="utf-8")
    common = [
        "--pretrained_model_name_or_path", model, "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", 96, "--width", 160,
        "--max_num_frames", 9, "--fps", 8, "--train_batch_size", 1, "--seed", 0, "--rank", 4,
        "--lora_alpha", 4, "--learning_rate", "1e-3", "--plugins", f"{RECORDER},aspect_bucket,rope_rescale",
    ]  # fmt: skip

    def launch(out: Path, *more) -> None:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), trainer]
        command += [str(a) for a in (*common, "--output_dir", out, *more)]
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[-6:])}: exit {done.returncode}\n{done.stderr[-4000:]}")

    whole, part = work / f"z{stage}_whole", work / f"z{stage}_part"
    launch(whole, "--max_train_steps", steps, "--recorder_out", whole / "ev")
    half = steps // 2
    launch(part, "--max_train_steps", half, "--checkpointing_steps", half, "--recorder_out", part / "ev1")
    launch(
        part, "--max_train_steps", steps, "--resume_from_checkpoint", "latest", "--recorder_out", part / "ev2"
    )
    expected, first, second = shapes(whole / "ev"), shapes(part / "ev1"), shapes(part / "ev2")
    for rank in expected:
        if first[rank] + second[rank] != expected[rank]:
            raise RuntimeError(f"{rank}: resumed {first[rank] + second[rank]}, expected {expected[rank]}")

    from diffusers import CogVideoXPipeline

    from cogvx_ext.inference import prepare_pipeline

    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained(model), whole)
    trained = [p for n, p in pipe.transformer.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    if not trained:
        raise RuntimeError("the saved LoRA loads, but holds no trained lora_B weight")
    return f"ZeRO-{stage}, {processes} ranks: trained, saved, resumed at the exact batch, LoRA loads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--trainer", default=None)
    args = parser.parse_args()
    from cogvx_ext.testing import build_tiny_model, write_dataset
    from cogvx_ext.trainers import minimal_trainer

    trainer = args.trainer or os.environ.get("COGVX_EXT_TRAINER") or str(minimal_trainer("t2v"))
    work = Path(tempfile.mkdtemp(prefix="cogvx_deepspeed_"))
    model = build_tiny_model(work / "models", "5b")
    data = write_dataset(work / "data", CLIPS, prompts=[f"clip {i}" for i in range(len(CLIPS))])
    failed = 0
    for stage in (int(s) for s in args.stages.split(",")):
        try:
            print(check_stage(stage, args.num_processes, trainer, model, data, work, args.steps), flush=True)
        except Exception as exc:  # report every stage
            failed += 1
            print(f"ZeRO-{stage}: FAILED: {exc}", flush=True)
    print(f"runs and configs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
