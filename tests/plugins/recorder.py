"""A test plugin that implements every hook and writes what it saw, one JSON line per event.

Data hooks are wrappers, so the core's defaults still do the work and are tested through it.
`--recorder_out DIR` gets one events-rank<N>.jsonl per process.
"""

from __future__ import annotations

import json
import os

import torch

from cogvx_ext import hookimpl


class Recorder:
    def __init__(self):
        self.path = None
        self.pending: list[dict] = []
        self.steps_seen = 0
        self.forwards = 0
        self.fail_at_step = None

    def record(self, event: str, **fields) -> None:
        line = {"event": event, **fields}
        if self.path is None:
            self.pending.append(line)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for item in [*self.pending, line]:
                f.write(json.dumps(item, default=str) + "\n")
        self.pending = []

    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--recorder_out", default=None)
        parser.add_argument("--recorder_fail_at_step", type=int, default=None)
        parser.add_argument("--recorder_fast_validation", action="store_true")
        self.record("add_arguments", parser_prog=parser.prog)

    @hookimpl
    def cogvx_configure(self, args):
        if args.recorder_out:
            os.makedirs(args.recorder_out, exist_ok=True)
            rank = os.environ.get("RANK", "0")
            self.path = os.path.join(args.recorder_out, f"events-rank{rank}.jsonl")
        self.fail_at_step = args.recorder_fail_at_step
        self.record("configure", height=args.height, width=args.width)

    @hookimpl
    def cogvx_provides(self):
        self.record("provides")
        return ["recorded"]

    @hookimpl
    def cogvx_requires(self, model):
        self.record("requires", model=model.name)
        return [("recorded", "the recorder provides this itself")]

    @hookimpl
    def cogvx_accelerator_ready(self, accelerator):
        self.record("accelerator_ready", num_processes=accelerator.num_processes)
        # The script hands its DataLoader to accelerator.prepare once every latent is in the
        # dataset: record what each rank holds for every clip, so tests can compare the ranks.
        real_prepare = accelerator.prepare

        def prepare(*objects, **kwargs):
            for obj in objects:
                dataset = getattr(obj, "dataset", None)
                if dataset is not None and hasattr(dataset, "instance_video_paths"):
                    self.record(
                        "dataset_latents",
                        latents={
                            os.path.basename(path): checksum(video)
                            for path, video in zip(dataset.instance_video_paths, dataset.instance_videos)
                        },
                    )
            return real_prepare(*objects, **kwargs)

        accelerator.prepare = prepare

    @hookimpl
    def cogvx_transformer_loaded(self, transformer):
        # Before LoRA: the script adds its adapter after this hook.
        self.record("transformer_loaded", has_adapter=bool(getattr(transformer, "peft_config", None)))

    @hookimpl
    def cogvx_vae_loaded(self, vae):
        self.record("vae_loaded", scaling_factor=vae.config.scaling_factor)

    @hookimpl(wrapper=True)
    def cogvx_clip_targets(self, clip):
        targets = yield
        self.record(
            "clip_targets",
            path=os.path.basename(clip.path),
            prompt=clip.prompt,
            source=[clip.info.width, clip.info.height],
            targets=[[t.width, t.height, t.num_frames] for t in targets or []],
        )
        return targets

    @hookimpl(wrapper=True)
    def cogvx_load_pixels(self, sample):
        pixels = yield
        self.record(
            "load_pixels",
            path=os.path.basename(sample.clip.path),
            shape=list(pixels.shape),
            low=float(pixels.min()),
            high=float(pixels.max()),
        )
        return pixels

    @hookimpl(wrapper=True)
    def cogvx_encode_sample(self, sample):
        encoded = yield
        parts = encoded if isinstance(encoded, tuple) else (encoded,)
        self.record(
            "encode_sample",
            path=os.path.basename(sample.clip.path),
            shapes=[list(p.parameters.shape) for p in parts],
            grad=torch.is_grad_enabled(),
            checksum=checksum(encoded),
        )
        return encoded

    @hookimpl(wrapper=True)
    def cogvx_batch_sampler(self, samples, batch_size, num_replicas):
        sampler = yield
        self.record(
            "batch_sampler",
            samples=len(samples),
            batch_size=batch_size,
            num_replicas=num_replicas,
            sampler=type(sampler).__name__ if sampler is not None else None,
        )
        return sampler

    @hookimpl
    def cogvx_transformer_forward(self, inputs, latent_shape):
        self.forwards += 1
        self.record(
            "transformer_forward",
            latent_shape=list(latent_shape),
            grad=torch.is_grad_enabled(),
            has_rope=inputs.get("image_rotary_emb") is not None,
        )

    @hookimpl(wrapper=True)
    def cogvx_rotary_embedding(self, latent_shape):
        rope = yield
        self.record(
            "rotary_embedding",
            latent_shape=list(latent_shape),
            tokens=None if rope is None else int(rope[0].shape[0]),
        )
        return rope

    @hookimpl(tryfirst=True)
    def cogvx_transformer_output(self, transformer, inputs, output):
        # First, so it sees every forward, and the inputs exactly as the model received them.
        sample = output[0] if isinstance(output, tuple) else output.sample
        hidden = inputs["hidden_states"]
        rope = inputs.get("image_rotary_emb")
        fields = {
            "shape": list(sample.shape),
            "input_shape": list(hidden.shape),
            "grad": torch.is_grad_enabled(),
        }
        if rope is not None:
            fields["rope_equals_pipeline"] = all(
                torch.equal(a, b) for a, b in zip(rope, pipeline_rope(transformer, hidden))
            )
        self.record("transformer_output", **fields)
        return None

    @hookimpl(trylast=True)
    def cogvx_step_end(self, step, logs):
        # Last, so it records what the other plugins added to the logs.
        self.steps_seen += 1
        logs["recorder_steps_seen"] = self.steps_seen
        self.record("step_end", step=step, loss=float(logs["loss"]), logs=logs)
        if self.fail_at_step is not None and step >= self.fail_at_step:
            raise RuntimeError(f"recorder: failing on purpose at step {step}")

    @hookimpl
    def cogvx_state_dict(self):
        self.record("state_dict", steps_seen=self.steps_seen)
        return {"steps_seen": self.steps_seen}

    @hookimpl
    def cogvx_load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]
        self.record("load_state_dict", state=state)

    @hookimpl
    def cogvx_pipeline_loaded(self, pipe):
        self.record("pipeline_loaded", pipeline=type(pipe).__name__)

    @hookimpl(trylast=True)
    def cogvx_validation_args(self, variants, args, samples):
        # Last, so it sees the sizes other plugins chose.
        self.record(
            "validation_args",
            sizes=[[v.get("width"), v.get("height")] for v in variants],
            samples=None if samples is None else len(samples),
        )
        if args.recorder_fast_validation:
            # The scripts validate with the pipeline's defaults (49 frames, 50 steps): minutes on CPU.
            for variant in variants:
                variant.update(num_frames=5, num_inference_steps=2)

    @hookimpl
    def cogvx_lora_metadata(self, args):
        self.record("lora_metadata")
        return {"recorder": True}

    @hookimpl
    def cogvx_exception(self, exc):
        self.record("exception", type=type(exc).__name__, message=str(exc))


def checksum(posterior):
    """Exact fingerprints of a posterior's numbers (a pair for I2V): sum, sum of squares, shape."""
    parts = posterior if isinstance(posterior, tuple) else (posterior,)
    out = []
    for part in parts:
        values = part.parameters.detach().double().cpu()
        out.append([float(values.sum()), float((values * values).sum()), list(values.shape)])
    return out


def pipeline_rope(transformer, hidden_states):
    """What the diffusers pipeline computes for this latent shape: the reference for parity."""
    from types import SimpleNamespace

    from diffusers import CogVideoXPipeline

    _, frames, _, height, width = hidden_states.shape
    pipe = SimpleNamespace(transformer=transformer, vae_scale_factor_spatial=8)
    return CogVideoXPipeline._prepare_rotary_positional_embeddings(
        pipe, height=height * 8, width=width * 8, num_frames=frames, device=hidden_states.device
    )
