"""The contracts the core keeps with any plugin (issue 12): what a hook's answer means, checked
on real parts (tiny transformers, real files), whoever the plugin is."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from tests_support import HERE

from cogvx_ext import hookimpl
from cogvx_ext.base.errors import SkipClip, UsageError
from cogvx_ext.cli.plan.command import run_plan
from cogvx_ext.data.clips import Clip, Target, VideoInfo
from cogvx_ext.data.context import RunContext
from cogvx_ext.data.contracts import target_problem
from cogvx_ext.model import rope
from cogvx_ext.model.facts import ModelInfo, released_model
from cogvx_ext.plugin.forward import install_forward_hooks
from cogvx_ext.plugin.manager import make_plugin_manager
from cogvx_ext.testing import tiny_transformer_config, write_dataset
from cogvx_ext.trainers import minimal_trainer

TEXT_LEN = 16


class RopeOff:
    @hookimpl
    def cogvx_rotary_embedding(self, latent_shape):
        return None


@pytest.mark.parametrize("kind", ["5b", "1.5-5B"])
def test_none_from_every_rope_plugin_means_the_default_rope_of_the_batch(kind):
    torch.manual_seed(0)
    config = tiny_transformer_config(kind)
    config["max_text_seq_length"] = TEXT_LEN
    transformer = CogVideoXTransformer3DModel(**config).eval()
    model = ModelInfo.from_config(transformer.config)
    pm = make_plugin_manager()
    pm.register(RopeOff(), name="rope_off")
    assert install_forward_hooks(transformer, pm.hook, model, RunContext("inference", model=model))
    seen = []
    transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("image_rotary_emb")), with_kwargs=True
    )
    for height, width in [(8, 12), (12, 8)]:
        hidden = torch.randn(1, 2, config["in_channels"], height, width)
        with torch.no_grad():
            transformer(hidden_states=hidden, encoder_hidden_states=torch.randn(1, TEXT_LEN, 32),
                        timestep=torch.tensor([500]), image_rotary_emb=None, return_dict=False)  # fmt: skip
        expected = rope.rotary_embedding(model, (2, height, width), "cpu", mode="pipeline")
        assert seen[-1] is not None and all(torch.equal(a, b) for a, b in zip(seen[-1], expected))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    from cogvx_ext.base.io import write_json_atomic

    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "a" / "state.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a" / "state.json").stat().st_mode & 0o777 == mode


# ---- targets: checked as a plugin returns them, before anything is decoded ----------------------

BAD_TARGETS = f"{HERE / 'plugins' / 'bad_targets.py'}:BadTargets"
RULES = {
    "size": "width 168 is not a multiple of 16 (VAE 8 x patch 2)",
    "frames": "8 frames: the VAE takes 4k+1 frames",
    "crop": "is not inside the 256x144 source",
    "past_end": "frame index 17 is past the clip's end: it has 17 frames (0 to 16)",
    "negative_frame": "frame index -1 is negative (frames count from 0)",
}


def target_of(**changes) -> Target:
    fields = dict(height=96, width=160, frame_indices=tuple(range(9)), crop=(0, 0, 144, 256))
    return Target(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes, rule",
    [
        ({}, None),
        ({"height": 0}, "height must be a positive whole number"),
        ({"width": 100}, "width 100 is not a multiple of 16"),
        ({"frame_indices": tuple(range(8))}, "8 frames: the VAE takes 4k+1 frames"),
        ({"frame_indices": ()}, "0 frames"),
        ({"frame_indices": tuple(range(8, 17))}, None),  # the clip's last frame is 16
        (
            {"frame_indices": tuple(range(9, 18))},
            "frame index 17 is past the clip's end: it has 17 frames (0 to 16)",
        ),
        ({"frame_indices": (-1, *range(8))}, "frame index -1 is negative (frames count from 0)"),
        ({"frame_indices": (0.5, *range(1, 9))}, "frame index 0.5 is not a whole number"),
        ({"crop": (0, 0, 145, 256)}, "not inside the 256x144 source"),
        ({"crop": (0, -1, 144, 256)}, "not inside the 256x144 source"),
        ({"crop": (0, 0, 144, 0)}, "not inside the 256x144 source"),
    ],
)
def test_target_rules(changes, rule):
    clip = Clip(
        index=0, path="a.mp4", prompt="p", info=VideoInfo(width=256, height=144, num_frames=17, fps=8.0)
    )
    problem = target_problem(target_of(**changes), clip, released_model("5b"))
    assert problem == rule if rule is None else rule in problem


def plan_flags(data, *extra, model="5b"):
    return ["--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
            "--height", "96", "--width", "160", "--max_num_frames", "9", "--model", model, *map(str, extra)]  # fmt: skip


@pytest.mark.parametrize("rule", sorted(RULES))
def test_plan_stops_at_a_bad_target_naming_plugin_clip_and_rule(tmp_path, rule):
    data = write_dataset(tmp_path / "data", [(256, 144, 17), (144, 256, 17)])
    with pytest.raises(UsageError) as info:
        run_plan(plan_flags(data, "--plugins", f"{BAD_TARGETS},rope_rescale", "--bad_target", rule))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"plugin 'bad_targets:BadTargets' gave {data / 'videos' / 'clip_000_256x144x17.mp4'} a target"
    )
    assert RULES[rule] in message


def test_requirements_follow_the_data_not_plugin_names(tmp_path, capsys):
    # Portrait targets on a landscape run, from a plugin that declares nothing: RoPE from
    # --height/--width would be transposed, so the run needs a RoPE that follows the batch.
    data = write_dataset(tmp_path / "data", [(256, 144, 17)])
    with pytest.raises(UsageError) as info:
        run_plan(plan_flags(data, "--plugins", BAD_TARGETS, "--bad_target", "transposed"))
    assert "5b model:" in str(info.value) and "trains at 96x160x9, not --width x --height 160x96" in str(
        info.value
    )
    assert "add rope_rescale" in str(info.value)
    assert (
        run_plan(plan_flags(data, "--plugins", f"{BAD_TARGETS},rope_rescale", "--bad_target", "transposed"))
        == 0
    )
    # 2b regenerates its sin-cos table per shape: nothing is needed.
    assert run_plan(plan_flags(data, "--plugins", BAD_TARGETS, "--bad_target", "transposed", model="2b")) == 0
    # 5b-I2V adds a learned table made for one size.
    with pytest.raises(UsageError, match="add posemb_adapt"):
        run_plan(
            plan_flags(
                data, "--plugins", f"{BAD_TARGETS},rope_rescale", "--bad_target", "transposed", model="5b-I2V"
            )
        )


# ---- plugin state: through the plugin manager, keyed by what the plugin is ----------------------


class Counter:
    def __init__(self):
        self.count = 0

    @hookimpl
    def cogvx_state_dict(self, step):
        return {"count": self.count, "step": step}

    @hookimpl
    def cogvx_load_state_dict(self, state):
        self.count = state["count"]


class Quiet:
    @hookimpl
    def cogvx_state_dict(self):
        return None


class Audit:
    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def cogvx_state_dict(self):
        states = yield
        self.seen.append(states)
        return [{**s, "audited": True} for s in states]


def test_state_goes_through_the_plugin_manager_keyed_by_identity(capsys, monkeypatch):
    from cogvx_ext.plugin.state import collect_states, restore_states

    monkeypatch.setenv("COGVX_EXT_TRACE", "1")
    pm = make_plugin_manager()
    counter, audit = Counter(), Audit()
    counter.count = 7
    pm.register(counter, name="whatever it was called")
    pm.register(Quiet(), name="quiet")
    pm.register(audit, name="audit")
    run = RunContext("train")
    states = collect_states(pm, step=3, run=run)
    identity = f"{__name__}:Counter"
    assert states == {identity: {"count": 7, "step": 3, "audited": True}}
    assert audit.seen == [[], [{"count": 7, "step": 3}]] or audit.seen == [[{"count": 7, "step": 3}], []]
    assert "cogvx_state_dict" in capsys.readouterr().err  # tracing sees the calls

    again = make_plugin_manager()
    fresh = Counter()
    again.register(fresh, name="another name")
    assert restore_states(again, states, run) == [identity]
    assert fresh.count == 7
    # A checkpoint from before identities: found under the registered name.
    older = make_plugin_manager()
    old = Counter()
    older.register(old, name="counter")
    restore_states(older, {"counter": {"count": 2}}, run)
    assert old.count == 2


# ---- probes: a hook, cached by latent_cache as JSON ----------------------------------------------


def test_cogvx_probe_answers_are_cached_as_json_under_the_clip_s_contents(tmp_path):
    import argparse
    import dataclasses
    import json
    import shutil

    from cogvx_ext.testing import write_clip
    from cogvx_ext_plugins.latent_cache import LatentCache

    clip = write_clip(tmp_path / "a.mp4", 160, 96, 9, fps=8)
    args = argparse.Namespace(latent_cache_dir=str(tmp_path / "cache"), latent_cache_readonly=False)

    def probe(path):
        """A fresh launch's answer, and whether the cache gave it."""
        pm = make_plugin_manager()
        pm.register(LatentCache(), name="latent_cache")
        pm.hook.cogvx_configure(args=args)
        info = pm.hook.cogvx_probe(path=str(path), args=args)
        return info, pm.get_plugin("latent_cache").stats.probe_hits == 1

    first, cached = probe(clip)
    assert not cached
    [entry] = (tmp_path / "cache" / "probes").rglob("*.json")
    stored = json.loads(entry.read_text())
    assert stored["info"] == json.loads(json.dumps(dataclasses.asdict(first)))  # every field
    assert stored["info"]["width"] == 160 and stored["info"]["frame_times"][:2] == [0.0, 0.125]
    assert probe(clip) == (first, True)
    copy = tmp_path / "elsewhere" / "b.mp4"  # another node's copy: another path and time
    copy.parent.mkdir()
    shutil.copyfile(clip, copy)
    assert probe(copy) == (first, True)
    # Replaced by other bytes of the same size and time: probed again (and rejected), never
    # answered from the old file's entry.
    stat = clip.stat()
    clip.write_bytes(bytes(stat.st_size))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(SkipClip):
        probe(clip)


# ---- the core knows no plugin ------------------------------------------------------------------


def test_the_core_imports_no_plugin_and_reads_no_plugin_flag():
    import argparse
    import ast
    from importlib import metadata
    from pathlib import Path

    import cogvx_ext

    parser = argparse.ArgumentParser()
    pm = make_plugin_manager()
    for ep in metadata.entry_points(group="cogvx_ext"):
        if ep.value.startswith("cogvx_ext_plugins."):
            pm.register(ep.load()(), name=ep.name)
    pm.hook.cogvx_add_arguments(parser=parser)
    flags = {action.dest for action in parser._actions} - {"help"}
    assert {"bucket_strict", "latent_cache_dir", "rope_mode"} <= flags
    problems = []
    for path in sorted(Path(cogvx_ext.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                problems += [f"{path.name}: imports {n}" for n in names if n.startswith("cogvx_ext_plugins")]
            elif isinstance(node, ast.Attribute) and node.attr in flags and _is_args(node.value):
                problems.append(f"{path.name}:{node.lineno}: reads args.{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) > 1
                and _is_args(node.args[0])
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in flags
            ):
                problems.append(
                    f"{path.name}:{node.lineno}: reads {node.func.id}(..., {node.args[1].value!r})"
                )
    assert problems == []


def _is_args(node) -> bool:
    """``args`` or ``something.args``: the parsed arguments."""
    import ast

    return (isinstance(node, ast.Name) and node.id == "args") or (
        isinstance(node, ast.Attribute) and node.attr == "args"
    )


def test_bucket_strict_is_aspect_bucket_s_answer_to_cogvx_clips_skipped():
    import argparse

    from cogvx_ext.data.clips import Skipped
    from cogvx_ext_plugins.aspect_bucket import AspectBucket

    pm = make_plugin_manager()
    pm.register(AspectBucket(), name="aspect_bucket")
    lost = [Skipped("a.mp4", "too short")]
    pm.hook.cogvx_clips_skipped(skipped=lost, when="plan", args=argparse.Namespace(bucket_strict=False))
    with pytest.raises(UsageError, match="--bucket_strict: 1 clip"):
        pm.hook.cogvx_clips_skipped(skipped=lost, when="plan", args=argparse.Namespace(bucket_strict=True))
    with pytest.raises(UsageError, match="failed to decode"):
        pm.hook.cogvx_clips_skipped(skipped=lost, when="decode", args=argparse.Namespace(bucket_strict=True))


def test_the_cache_command_talks_to_the_cache_plugin_through_hooks(tmp_path):
    import argparse

    from cogvx_ext_plugins.latent_cache import LatentCache

    pm = make_plugin_manager()
    assert pm.hook.cogvx_cache_summary() is None  # no cache plugin: the command says so
    pm.register(LatentCache(), name="latent_cache")
    args = argparse.Namespace(latent_cache_dir=str(tmp_path / "cache"), latent_cache_readonly=False, fps=8)
    pm.hook.cogvx_configure(args=args)
    assert pm.hook.cogvx_cache_summary()["root"] == str(tmp_path / "cache")
    stale = tmp_path / "cache" / "ab" / (".ab" + "0" * 62 + ".safetensors.x.tmp")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    result = pm.hook.cogvx_cache_prune(samples=[], args=args, dry_run=False, temp_age=0.0)
    assert result["temporary"] == 1 and not stale.exists()


# ---- offline tools take the script's own flags ---------------------------------------------------


def test_plan_takes_the_flags_and_defaults_of_the_script_at_hand(tmp_path, t2v_trainer, capsys, monkeypatch):
    import json

    monkeypatch.delenv("COGVX_EXT_TRAINER", raising=False)
    data = write_dataset(tmp_path / "data", [(256, 144, 25), (144, 256, 25)])
    flags = ["--instance_data_root", str(data), "--caption_column", "prompts.txt", "--video_column", "videos.txt",
             "--height", "96", "--width", "160", "--json", str(tmp_path / "plan.json")]  # fmt: skip
    # A flag only the script has (the copy has no --checkpointing_steps) is taken when the script is at hand.
    assert (
        run_plan(
            [*flags, "--trainer", str(t2v_trainer), "--checkpointing_steps", "4", "--max_num_frames", "9"]
        )
        == 0
    )
    with pytest.raises(UsageError, match="unrecognized arguments: --checkpointing_steps 4"):
        run_plan([*flags, "--checkpointing_steps", "4"])
    # Its defaults too: a script whose --max_num_frames defaults to 17.
    script = minimal_trainer("t2v").read_text()
    assert 'add("--max_num_frames", type=int, default=49)' in script
    changed = tmp_path / "my_trainer.py"
    changed.write_text(
        script.replace(
            'add("--max_num_frames", type=int, default=49)', 'add("--max_num_frames", type=int, default=17)'
        )
    )
    monkeypatch.setenv("COGVX_EXT_TRAINER", str(changed))
    capsys.readouterr()
    assert run_plan(flags) == 0
    frames = {c["frames"] for c in json.loads((tmp_path / "plan.json").read_text())["clips"]}
    assert frames == {17}
