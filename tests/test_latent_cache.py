"""latent_cache: content keys, hits without decoding, bad entries, killed writers, fill and prune.

Real files, a real tiny VAE and text encoder, real subprocesses; nothing is mocked.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest
import torch

from cogvx_ext import hookimpl
from cogvx_ext.base.errors import UsageError
from cogvx_ext.cli.cache import run_cache
from cogvx_ext.data.clips import Clip, Sample, Target
from cogvx_ext.data.encoding import LatentPosterior
from cogvx_ext.data.video import probe
from cogvx_ext.plugin import hookspecs
from cogvx_ext.plugin.manager import make_plugin_manager, register_plugin
from cogvx_ext.script.seams.dataset import ScriptEncoding
from cogvx_ext.testing import build_tiny_model, write_clip, write_dataset
from cogvx_ext_plugins.latent_cache import LatentCache, keys, store

DECODES_ENV = "LATENT_CACHE_TEST_DECODES"  # not COGVX_EXT_*: the train fixture drops those


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("latent_cache_model"), "5b")


@pytest.fixture
def vae(model_dir):
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae").eval()


@pytest.fixture(scope="session")
def count_decodes_plugin(tmp_path_factory) -> Path:
    """A plugin file that appends the path of every decoded clip to the file named by DECODES_ENV."""
    path = tmp_path_factory.mktemp("latent_cache_plugins") / "latent_cache_count_decodes.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import os
            from cogvx_ext import hookimpl

            @hookimpl(wrapper=True)
            def cogvx_load_pixels(sample):
                pixels = yield
                with open(os.environ["{DECODES_ENV}"], "a", encoding="utf-8") as f:
                    f.write(sample.clip.path + "\\n")
                return pixels
            """
        )
    )
    return path


def decoded(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def make_sample(path: Path, height=64, width=64, frames=(0, 1, 2, 3, 4), crop=None, tags=()) -> Sample:
    info = probe(path)
    crop = crop or (0, 0, info.height, info.width)
    clip = Clip(index=0, path=str(path), prompt="a red square", info=info)
    return Sample(
        clip, Target(height=height, width=width, frame_indices=tuple(frames), crop=crop, tags=tuple(tags))
    )


class CountingEncoder:
    """The script's own recipe (seams.ScriptEncoding) as the innermost encoder, counting its calls."""

    def __init__(self, pm: pluggy.PluginManager, kind: str):
        self.calls: list[str] = []
        self.kind = kind
        self.recipe = ScriptEncoding(SimpleNamespace(hook=pm.hook, kind=kind))

    @hookimpl(trylast=True)
    def cogvx_encode_sample(self, sample, vae, kind, args):
        self.calls.append(sample.clip.path)
        return self.recipe.cogvx_encode_sample(sample=sample, vae=vae, kind=kind, args=args, run=None)


def start(cache_dir: Path, kind: str = "t2v", *extra: str):
    """A fresh run (what one launch sees): manager, the plugin, the counting encoder, the arguments."""
    pm = make_plugin_manager()
    register_plugin(pm, LatentCache, "latent_cache")
    encoder = CountingEncoder(pm, kind)
    pm.register(encoder, name="counting_encoder")
    pm.check_pending()
    parser = argparse.ArgumentParser()
    parser.add_argument("--fps", type=int, default=8)
    pm.hook.cogvx_add_arguments(parser=parser)
    args = parser.parse_args(["--latent_cache_dir", str(cache_dir), *extra])
    pm.hook.cogvx_configure(args=args)
    return pm, pm.get_plugin("latent_cache"), encoder, args


def encode(pm, sample, vae, args):
    kind = pm.get_plugin("counting_encoder").kind
    with torch.no_grad():
        return pm.hook.cogvx_encode_sample(sample=sample, vae=vae, kind=kind, args=args)


def parts(result) -> list[torch.Tensor]:
    return [p.parameters for p in (result if isinstance(result, tuple) else (result,))]


# ---- keys --------------------------------------------------------------------------------------


def key_of(sample, vae, args, cache_dir, kind="t2v") -> str:
    _, cache, _, _ = start(cache_dir)
    return cache.lookup(sample, vae, kind, args).key


def touch(path: Path, sample, vae, args):
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return sample, vae, args


def change_last_byte_past_the_head_keep_size_and_mtime(monkeypatch):
    def change(path: Path, sample, vae, args):
        # A clip longer than twice the hashed ends: only the last MiB sees the change.
        monkeypatch.setattr(keys, "HEAD_BYTES", 64)
        stat = path.stat()
        data = bytearray(path.read_bytes())
        assert len(data) > 3 * 64
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return sample, vae, args

    return change


def change_head_keep_size_and_mtime(path: Path, sample, vae, args):
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the first MiB: these clips are a few KiB
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return sample, vae, args


def append_bytes_keep_mtime(path: Path, sample, vae, args):
    stat = path.stat()
    with open(path, "ab") as f:
        f.write(b"\0")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return sample, vae, args


def with_target(**changes):
    def change(path, sample, vae, args):
        target = sample.target
        fields = dict(
            height=target.height,
            width=target.width,
            frame_indices=target.frame_indices,
            crop=target.crop,
            tags=target.tags,
        )
        fields.update(changes)
        return Sample(sample.clip, Target(**fields)), vae, args

    return change


def with_args(**changes):
    def change(path, sample, vae, args):
        return sample, vae, argparse.Namespace(**{**vars(args), **changes})

    return change


def with_vae(mutate):
    def change(path, sample, vae, args):
        mutate(vae)
        return sample, vae, args

    return change


def with_format_version(monkeypatch):
    def change(path, sample, vae, args):
        monkeypatch.setattr(keys, "FORMAT_VERSION", keys.FORMAT_VERSION + 1)
        return sample, vae, args

    return change


def nudge_a_weight(vae):
    with torch.no_grad():
        next(iter(vae.parameters())).view(-1)[0] += 0.01


CHANGES = {
    "last MiB changed, same size and mtime": change_last_byte_past_the_head_keep_size_and_mtime,
    "first MiB changed, same size and mtime": lambda mp: change_head_keep_size_and_mtime,
    "bytes appended, same mtime": lambda mp: append_bytes_keep_mtime,
    "crop box": lambda mp: with_target(crop=(2, 0, 60, 64)),
    "frame indices": lambda mp: with_target(frame_indices=(1, 2, 3, 4, 5)),
    "bucket (target size)": lambda mp: with_target(height=48, width=80),
    "target tags": lambda mp: with_target(tags=(("stage", "2"),)),
    "fps": lambda mp: with_args(fps=12),
    "VAE dtype": lambda mp: with_vae(lambda v: v.to(torch.bfloat16)),
    "VAE slicing": lambda mp: with_vae(lambda v: v.enable_slicing()),
    "VAE tiling": lambda mp: with_vae(lambda v: v.enable_tiling()),
    "VAE scaling factor": lambda mp: with_vae(lambda v: v.register_to_config(scaling_factor=1.0)),
    "VAE weights": lambda mp: with_vae(nudge_a_weight),
    "format version": with_format_version,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_key_changes_with_each_component(change, tmp_path, vae, monkeypatch):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample, args = make_sample(path), argparse.Namespace(fps=8)
    before = key_of(sample, vae, args, tmp_path / "cache")
    sample, vae, args = CHANGES[change](monkeypatch)(path, sample, vae, args)
    assert key_of(sample, vae, args, tmp_path / "cache") != before


# Every setting AutoencoderKLCogVideoX keeps on the object (diffusers 0.42), each with another value.
# From a tiled VAE with small tiles, so that every tile setting is in play.
VAE_SETTINGS = {
    "use_slicing": True,
    "use_tiling": False,
    "tile_sample_min_height": 56,
    "tile_sample_min_width": 56,
    "tile_latent_min_height": 5,
    "tile_latent_min_width": 5,
    "tile_overlap_factor_height": 0.25,
    "tile_overlap_factor_width": 0.25,
    "num_sample_frames_batch_size": 4,
    "num_latent_frames_batch_size": 1,
}
DECODING_ONLY = {"num_latent_frames_batch_size"}
SLICES_BATCHES = {"use_slicing"}  # encodes a batch one item at a time; cogvx-ext encodes one clip


def tiled(vae):
    vae.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48)  # latent tiles of 6
    return vae


def test_every_setting_on_the_vae_is_named_here(vae):
    plain = {
        k for k, v in vars(vae).items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))
    }
    assert plain - {"training"} == set(VAE_SETTINGS)


@pytest.mark.parametrize("setting", sorted(VAE_SETTINGS))
def test_key_changes_with_each_vae_setting(setting, tmp_path, vae):
    # Fails when `setting` is left out of the key (keys.vae_settings).
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample, args = make_sample(path), argparse.Namespace(fps=8)
    before = key_of(sample, tiled(vae), args, tmp_path / "cache")
    assert getattr(vae, setting) != VAE_SETTINGS[setting]
    setattr(vae, setting, VAE_SETTINGS[setting])
    assert key_of(sample, vae, args, tmp_path / "cache") != before


@pytest.mark.parametrize("setting", sorted(set(VAE_SETTINGS) - DECODING_ONLY - SLICES_BATCHES))
def test_each_vae_setting_changes_the_posterior(setting, vae):
    # Why each is in the key: the same pixels give other latents.
    pixels = torch.rand(1, 3, 9, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        before = tiled(vae).encode(pixels).latent_dist.parameters
        setattr(vae, setting, VAE_SETTINGS[setting])
        after = vae.encode(pixels).latent_dist.parameters
    assert before.shape != after.shape or not torch.allclose(before, after)


def test_key_changes_with_the_script_kind(tmp_path, vae):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample, args = make_sample(path), argparse.Namespace(fps=8)
    assert key_of(sample, vae, args, tmp_path / "cache", "i2v") != key_of(
        sample, vae, args, tmp_path / "cache"
    )


def test_key_is_stable_across_runs_and_model_loads(tmp_path, model_dir):
    from diffusers import AutoencoderKLCogVideoX

    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    args = argparse.Namespace(fps=8)
    keys = set()
    for _ in range(2):
        vae = AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae")
        keys.add(key_of(make_sample(path), vae, args, tmp_path / "cache"))
    # Reading the clip, a moved copy of the dataset (same bytes, same mtime), a copy made later (as
    # another node's copy is) and a touched file change nothing: the bytes are the same.
    moved = tmp_path / "moved" / "clip.mp4"
    moved.parent.mkdir()
    shutil.copy2(path, moved)
    keys.add(key_of(make_sample(moved), vae, args, tmp_path / "cache"))
    copied = tmp_path / "node1" / "clip.mp4"
    copied.parent.mkdir()
    shutil.copyfile(path, copied)
    touch(copied, None, None, None)
    keys.add(key_of(make_sample(copied), vae, args, tmp_path / "cache"))
    assert len(keys) == 1


def test_a_clip_replaced_with_the_same_size_and_time_gets_neither_its_header_nor_its_latents(tmp_path, vae):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    pm, cache, encoder, args = start(tmp_path / "cache")
    info = pm.hook.cogvx_probe(path=str(path), args=args)
    encode(pm, make_sample(path), vae, args)
    pm, cache, encoder, args = start(tmp_path / "cache")  # nothing changed: both from the cache
    assert pm.hook.cogvx_probe(path=str(path), args=args) == info and cache.stats.probe_hits == 1
    encode(pm, make_sample(path), vae, args)
    assert encoder.calls == [] and cache.stats.hits == 1

    change_head_keep_size_and_mtime(path, None, None, None)
    pm, cache, encoder, args = start(tmp_path / "cache")
    assert pm.hook.cogvx_probe(path=str(path), args=args) == info  # the same header, read again
    assert cache.stats.probe_hits == 0
    encode(pm, make_sample(path), vae, args)
    assert encoder.calls == [str(path)] and cache.stats.hits == 0


# ---- hits and misses -------------------------------------------------------------------------


def test_hit_returns_the_same_posterior_without_encoding(tmp_path, vae):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample = make_sample(path)
    pm, cache, encoder, args = start(tmp_path / "cache")
    first = encode(pm, sample, vae, args)
    assert encoder.calls == [str(path)] and (cache.stats.hits, cache.stats.misses) == (0, 1)
    files = list(store.scan_cache(tmp_path / "cache"))
    assert [f.kind for f in files] == ["entry"]

    pm, cache, encoder, args = start(tmp_path / "cache")  # the next launch
    again = encode(pm, sample, vae, args)
    assert encoder.calls == [] and (cache.stats.hits, cache.stats.misses) == (1, 0)
    assert isinstance(again, LatentPosterior) and again.parameters.device.type == "cpu"
    assert torch.equal(again.parameters, first.parameters)
    assert "1 sample(s) read from the cache, 0 encoded" in cache.summary()


def test_i2v_caches_the_pair_with_its_noised_first_frame(tmp_path, vae):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample = make_sample(path)
    pm, _, encoder, args = start(tmp_path / "cache", "i2v")
    first = encode(pm, sample, vae, args)
    assert isinstance(first, tuple) and len(first) == 2
    pm, _, encoder, args = start(tmp_path / "cache", "i2v")
    again = encode(pm, sample, vae, args)
    assert encoder.calls == []
    assert all(torch.equal(a, b) for a, b in zip(parts(again), parts(first)))
    assert parts(again)[1].shape[2] == 1  # one latent frame: the image
    # A T2V run of the same clip has its own entry.
    pm, _, encoder, args = start(tmp_path / "cache", "t2v")
    encode(pm, sample, vae, args)
    assert encoder.calls == [str(path)]


def test_readonly_cache_reads_but_never_writes(tmp_path, vae):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    with pytest.raises(UsageError, match="does not exist"):
        start(tmp_path / "missing", "t2v", "--latent_cache_readonly")
    (tmp_path / "cache").mkdir()
    pm, cache, encoder, args = start(tmp_path / "cache", "t2v", "--latent_cache_readonly")
    encode(pm, make_sample(path), vae, args)
    assert encoder.calls and not list(store.scan_cache(tmp_path / "cache"))
    assert "not stored (--latent_cache_readonly)" in cache.summary()


def test_the_cache_folder_is_required(tmp_path):
    pm = make_plugin_manager()
    register_plugin(pm, LatentCache, "latent_cache")
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    with pytest.raises(UsageError, match="--latent_cache_dir"):
        pm.hook.cogvx_configure(args=parser.parse_args([]))


# ---- entries that cannot be trusted ------------------------------------------------------------


def truncate(path: Path, other: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path, other: Path):
    path.write_bytes(b"not a safetensors file at all")


def empty(path: Path, other: Path):
    path.write_bytes(b"")


def another_entrys_file(path: Path, other: Path):
    shutil.copyfile(other, path)


def rewrite(change):
    def damage(path: Path, other: Path):
        tensors, metadata = store.read_entry(path)
        store.write_entry(path, {"video": change(tensors["video"])}, metadata)

    return damage


DAMAGE = {
    "truncated": truncate,
    "garbage": garbage,
    "empty": empty,
    "another entry's file": another_entrys_file,
    "NaN values": rewrite(lambda t: torch.full_like(t, float("nan"))),
    "wrong shape": rewrite(lambda t: t[:, :, :1].contiguous()),
    "wrong dtype": rewrite(lambda t: t.double()),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_bad_entry_is_reported_and_encoded_again(damage, tmp_path, vae, capsys):
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample, other_sample = make_sample(path), make_sample(path, frames=(1, 2, 3, 4, 5))
    pm, cache, _, args = start(tmp_path / "cache")
    first = encode(pm, sample, vae, args)
    encode(pm, other_sample, vae, args)
    entry = cache.lookup(sample, vae, "t2v", args).path
    DAMAGE[damage](entry, cache.lookup(other_sample, vae, "t2v", args).path)
    capsys.readouterr()

    pm, cache, encoder, args = start(tmp_path / "cache")
    encode(pm, sample, vae, args)
    out = capsys.readouterr().out
    assert encoder.calls == [str(path)] and cache.stats.recomputed == 1
    assert f"{path} [64x64, 5 frames]: cached entry {entry.name} is unusable" in out
    assert "encoding again" in out

    pm, cache, encoder, args = start(tmp_path / "cache")  # the replacement is whole again
    again = encode(pm, sample, vae, args)
    assert encoder.calls == [] and again.parameters.shape == first.parameters.shape


KILLED_WRITER = """
import sys
import torch
from cogvx_ext_plugins.latent_cache import keys, store

root, i = sys.argv[1], 0
while True:
    key = keys.digest(["killed writer", sys.argv[2], i])
    metadata = {store.META_FORMAT: str(keys.FORMAT_VERSION), store.META_KEY: key}
    video = torch.full((1, 8, 8, 128, 128), float(i))
    print("writing", i, flush=True)
    store.write_entry(store.entry_path(root, key), {"video": video}, metadata)
    i += 1
"""


def test_a_killed_writer_leaves_whole_entries_and_temporary_files_only(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    root = tmp_path / "cache"
    rng = random.Random()
    temps_seen = 0
    for round_ in range(10):
        writer = subprocess.Popen(
            [sys.executable, str(script), str(root), str(round_)], stdout=subprocess.PIPE, text=True
        )
        writer.stdout.readline()  # imports done, the first write begins
        # One write takes 15-30 ms here: a kill within 60 ms lands before, inside or after one.
        time.sleep(rng.uniform(0.0, 0.06))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        files = list(store.scan_cache(root))
        for item in files:
            if item.kind == "temp":
                continue
            tensors, metadata = store.read_entry(item.path)
            key = item.path.name.removesuffix(store.SUFFIX)
            store.check_entry(tensors, metadata, key, {"video": (1, 8, 8, 128, 128)}, torch.float32)
        temps = [f.path for f in files if f.kind == "temp"]
        temps_seen += len(temps)
        # The loader opens `<key>.safetensors` only, a name no temporary file has.
        assert not any(store.ENTRY_NAME.match(temp.name) for temp in temps)
        # Cleanup (what prune does) removes exactly the temporary files.
        removed = [path for path, _ in store.remove_stale_temp_files(root, older_than_s=0)]
        assert sorted(removed) == sorted(temps)
        if temps_seen and round_ >= 2:
            break  # enough: whole entries and a write cut short were both checked
    assert all(item.kind != "temp" for item in store.scan_cache(root))


def test_a_write_cut_short_is_never_read_and_is_cleaned_up(tmp_path, vae, capsys):
    """What a kill inside a write leaves, made on purpose (the test above leaves it by chance)."""
    path = write_clip(tmp_path / "clip.mp4", 64, 64, 9)
    sample = make_sample(path)
    pm, cache, _, args = start(tmp_path / "cache")
    entry = cache.lookup(sample, vae, "t2v", args).path
    encode(pm, sample, vae, args)
    whole = entry.read_bytes()
    entry.unlink()
    temp = entry.parent / f".{entry.name}.k1ll3d.tmp"
    temp.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()

    pm, cache, encoder, args = start(tmp_path / "cache")
    encode(pm, sample, vae, args)
    assert encoder.calls == [str(path)] and cache.stats.recomputed == 0  # a plain miss
    assert "unusable" not in capsys.readouterr().out
    assert [p for p, _ in store.remove_stale_temp_files(tmp_path / "cache", older_than_s=0)] == [temp]
    assert [f.kind for f in store.scan_cache(tmp_path / "cache")] == ["entry"]


# ---- cogvx-ext cache fill / prune ----------------------------------------------------------------

CLIPS = [(96, 64, 9), (64, 96, 9), (64, 64, 9)]


def cache_flags(root: Path, cache_dir: Path, *more: str) -> list[str]:
    return [
        "--instance_data_root", str(root),
        "--caption_column", "prompts.txt",
        "--video_column", "videos.txt",
        "--latent_cache_dir", str(cache_dir),
        "--height", "64", "--width", "96", "--max_num_frames", "9",
        "--bucket_min_side", "64",
        *more,
    ]  # fmt: skip


def test_fill_then_fill_again_decodes_nothing(tmp_path, model_dir, count_decodes_plugin, monkeypatch, capsys):
    root = write_dataset(tmp_path / "data", CLIPS)
    monkeypatch.setenv(DECODES_ENV, str(tmp_path / "decoded.txt"))
    flags = cache_flags(
        root,
        tmp_path / "cache",
        "--pretrained_model_name_or_path", str(model_dir),
        "--plugins", f"aspect_bucket,rope_rescale,latent_cache,{count_decodes_plugin}",
    )  # fmt: skip
    assert run_cache(["fill", *flags]) == 0
    assert "3 sample(s) of 3 clip(s): 0 already cached, 3 encoded" in capsys.readouterr().out
    assert len(decoded(tmp_path / "decoded.txt")) == 3
    assert sum(1 for f in store.scan_cache(tmp_path / "cache") if f.kind == "entry") == 3

    (tmp_path / "decoded.txt").unlink()
    assert run_cache(["fill", *flags]) == 0
    assert "3 sample(s) of 3 clip(s): 3 already cached, 0 encoded" in capsys.readouterr().out
    assert decoded(tmp_path / "decoded.txt") == []


def test_fill_needs_the_model_and_the_plugin(tmp_path, capsys):
    root = write_dataset(tmp_path / "data", CLIPS[:1])
    assert run_cache(["fill", *cache_flags(root, tmp_path / "cache")]) == 2
    assert "--pretrained_model_name_or_path" in capsys.readouterr().err
    without_cache_dir = [
        f for f in cache_flags(root, tmp_path) if f not in ("--latent_cache_dir", str(tmp_path))
    ]
    assert run_cache(["fill", *without_cache_dir, "--plugins", "aspect_bucket,rope_rescale"]) == 2
    assert "add latent_cache to --plugins" in capsys.readouterr().err
    assert run_cache(["bogus"]) == 2


def test_prune_removes_what_the_dataset_no_longer_reaches(tmp_path, model_dir, capsys):
    root = write_dataset(tmp_path / "data", CLIPS)
    cache_dir = tmp_path / "cache"
    flags = cache_flags(root, cache_dir)
    assert run_cache(["fill", *flags, "--pretrained_model_name_or_path", str(model_dir)]) == 0
    entries = {f.path for f in store.scan_cache(cache_dir)}
    assert len(entries) == 3
    stale_temp = cache_dir / "ab" / f".{'ab' * 32}.safetensors.x1y2.tmp"
    stale_temp.parent.mkdir(exist_ok=True)
    stale_temp.write_bytes(b"half an entry")
    os.utime(stale_temp, (time.time() - 7200, time.time() - 7200))
    (cache_dir / "README.txt").write_text("not the cache's: left alone")
    capsys.readouterr()

    # Clip 1 leaves the listing.
    for name in ("videos.txt", "prompts.txt"):
        lines = (root / name).read_text().splitlines()
        (root / name).write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert run_cache(["prune", *flags, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would remove") == 3  # the summary line, the entry, the temporary file
    assert "clip_001_64x96x9.mp4" in out and stale_temp.name in out
    assert {f.path for f in store.scan_cache(cache_dir)} >= entries  # nothing removed

    assert run_cache(["prune", *flags]) == 0
    out = capsys.readouterr().out
    assert "2 entries kept, removed 1" in out and "1 temporary file(s)" in out
    left = {f.path for f in store.scan_cache(cache_dir)}
    assert len(left) == 2 and left < entries
    assert (cache_dir / "README.txt").exists()
    for path in left:
        assert "clip_001" not in store.read_metadata(path)[store.META_SOURCE]

    assert run_cache(["fill", *flags, "--pretrained_model_name_or_path", str(model_dir)]) == 0
    assert "2 already cached, 0 encoded" in capsys.readouterr().out


def subprocess_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **more)
    return env


@pytest.mark.slow
def test_two_processes_fill_their_shares_and_one_process_reads_them(tmp_path, model_dir, capsys):
    root = write_dataset(tmp_path / "data", CLIPS)
    flags = cache_flags(root, tmp_path / "cache", "--pretrained_model_name_or_path", str(model_dir))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, "-m", "cogvx_ext.cli.cache", "fill", *flags],
        env=subprocess_env(ACCELERATE_USE_CPU="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 already cached, 3 encoded; cache" in result.stdout and "(2 processes)" in result.stdout
    assert run_cache(["fill", *flags]) == 0
    assert "3 already cached, 0 encoded" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_training_launch_decodes_and_encodes_nothing(
    tmp_path, model_dir, t2v_trainer, train, count_decodes_plugin
):
    root = write_dataset(tmp_path / "data", CLIPS)
    decodes = tmp_path / "decoded.txt"
    args = [
        "--pretrained_model_name_or_path", model_dir,
        *cache_flags(root, tmp_path / "cache"),
        "--train_batch_size", "1", "--max_train_steps", "1", "--rank", "4", "--lora_alpha", "4",
        "--output_dir", tmp_path / "out",
        "--plugins", f"aspect_bucket,rope_rescale,latent_cache,{count_decodes_plugin}",
    ]  # fmt: skip
    first = train(t2v_trainer, args, env={DECODES_ENV: str(decodes)})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "latent_cache: 0 sample(s) read from the cache, 3 encoded" in first.stdout + first.stderr
    assert len(decoded(decodes)) == 3
    decodes.unlink()
    second = train(t2v_trainer, args, env={DECODES_ENV: str(decodes)})
    assert second.returncode == 0, second.stderr[-3000:]
    assert "latent_cache: 3 sample(s) read from the cache, 0 encoded" in second.stdout + second.stderr
    assert decoded(decodes) == []


@pytest.mark.slow
def test_a_launch_that_decodes_ahead_fills_the_cache_as_one_at_a_time(
    tmp_path, model_dir, t2v_trainer, train
):
    # The next clip decodes in a thread while this one encodes (cogvx_ext.data.decode_ahead):
    # the same entries, bit for bit, as COGVX_EXT_DECODE_AHEAD=0 (decoding in the loop).
    from safetensors.torch import load_file

    root = write_dataset(tmp_path / "data", CLIPS)
    threads = tmp_path / "threads.py"
    threads.write_text(
        "import os, threading\n"
        "from cogvx_ext import hookimpl\n"
        "@hookimpl(wrapper=True)\n"
        "def cogvx_load_pixels(sample):\n"
        "    pixels = yield\n"
        f"    with open(os.environ['{DECODES_ENV}'], 'a', encoding='utf-8') as f:\n"
        "        f.write(threading.current_thread().name + '\\n')\n"
        "    return pixels\n"
    )
    seen = {}
    for mode in ("0", "1"):
        args = [
            "--pretrained_model_name_or_path", model_dir,
            *cache_flags(root, tmp_path / f"cache_{mode}"),
            "--train_batch_size", "1", "--max_train_steps", "1", "--rank", "4", "--lora_alpha", "4",
            "--output_dir", tmp_path / f"out_{mode}",
            "--plugins", f"aspect_bucket,rope_rescale,latent_cache,{threads}",
        ]  # fmt: skip
        decodes = tmp_path / f"threads_{mode}.txt"
        result = train(t2v_trainer, args, env={DECODES_ENV: str(decodes), "COGVX_EXT_DECODE_AHEAD": mode})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "latent_cache: 0 sample(s) read from the cache, 3 encoded" in result.stdout + result.stderr
        seen[mode] = set(decoded(decodes))
    assert seen == {"0": {"MainThread"}, "1": {"cogvx-ext decode ahead"}}
    entries = {mode: sorted((tmp_path / f"cache_{mode}").glob("??/*.safetensors")) for mode in ("0", "1")}
    assert len(entries["1"]) == 3 and [p.name for p in entries["0"]] == [p.name for p in entries["1"]]
    for one_at_a_time, ahead in zip(entries["0"], entries["1"]):
        a, b = load_file(one_at_a_time), load_file(ahead)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- prompt embeddings ---------------------------------------------------------------------------


class PromptSpec:
    """The spec proposed for the core, for managers whose hookspecs do not have it yet."""

    @hookspecs.hookspec(firstresult=True)
    def cogvx_prompt_embeddings(
        self, prompts, tokenizer, text_encoder, max_sequence_length, device, dtype, cached_only
    ):
        """Stops at first non-None result."""


class CountingPromptEncoder:
    """The scripts' prompt recipe (T5 on max-length padded ids), counting what it encodes."""

    def __init__(self):
        self.encoded: list[str] = []

    @hookimpl(trylast=True)
    def cogvx_prompt_embeddings(
        self, prompts, tokenizer, text_encoder, max_sequence_length, device, dtype, cached_only
    ):
        if cached_only:
            return None
        self.encoded.extend(prompts)
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            return text_encoder(ids.to(device))[0].to(device=device, dtype=dtype)


@pytest.fixture
def text_models(model_dir):
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    return tokenizer, T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder").eval()


def start_prompts(cache_dir: Path):
    pm = make_plugin_manager()
    if not hasattr(hookspecs, "cogvx_prompt_embeddings"):
        pm.add_hookspecs(PromptSpec)
    register_plugin(pm, LatentCache, "latent_cache")
    encoder = CountingPromptEncoder()
    pm.register(encoder, name="counting_prompt_encoder")
    pm.check_pending()
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    pm.hook.cogvx_configure(args=parser.parse_args(["--latent_cache_dir", str(cache_dir)]))
    return pm, pm.get_plugin("latent_cache"), encoder


def embed(pm, prompts, text_models, length=16, dtype=torch.float32, cached_only=False):
    tokenizer, text_encoder = text_models
    return pm.hook.cogvx_prompt_embeddings(
        prompts=prompts,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        max_sequence_length=length,
        device=torch.device("cpu"),
        dtype=dtype,
        cached_only=cached_only,
    )


def test_prompt_embeddings_are_cached_per_prompt(tmp_path, text_models):
    prompts = ["a red square", "a cat runs over a road"]
    pm, cache, encoder = start_prompts(tmp_path / "cache")
    assert embed(pm, prompts, text_models, cached_only=True) is None  # nothing cached yet
    first = embed(pm, prompts, text_models)
    assert encoder.encoded == prompts and first.shape == (2, 16, 32)
    assert sum(1 for f in store.scan_cache(tmp_path / "cache") if f.kind == "prompt") == 2
    # Within the run they come from memory, not from disk.
    shutil.rmtree(tmp_path / "cache" / store.PROMPTS_DIR)
    assert torch.equal(embed(pm, prompts[::-1], text_models), first.flip(0)) and encoder.encoded == prompts

    pm, cache, encoder = start_prompts(tmp_path / "cache")  # the next launch encodes them again
    embed(pm, prompts, text_models)
    assert encoder.encoded == prompts
    pm, cache, encoder = start_prompts(tmp_path / "cache")  # and the one after reads them
    again = embed(pm, prompts, text_models, cached_only=True)
    assert encoder.encoded == [] and torch.equal(again, first)
    assert cache.stats.prompt_hits == 2


def test_a_batch_with_one_new_prompt_is_encoded_and_the_new_one_stored(tmp_path, text_models):
    pm, _, encoder = start_prompts(tmp_path / "cache")
    embed(pm, ["a red square"], text_models)
    embed(pm, ["a red square", "a blue circle"], text_models)
    assert encoder.encoded == ["a red square", "a red square", "a blue circle"]
    pm, _, encoder = start_prompts(tmp_path / "cache")
    embed(pm, ["a blue circle", "a red square"], text_models)
    assert encoder.encoded == []


def test_prompt_key_follows_length_dtype_and_encoder(tmp_path, text_models):
    tokenizer, text_encoder = text_models
    pm, _, encoder = start_prompts(tmp_path / "cache")
    embed(pm, ["a red square"], text_models)
    embed(pm, ["a red square"], text_models, length=20)
    embed(pm, ["a red square"], text_models, dtype=torch.bfloat16)
    embed(pm, ["a red square"], (tokenizer, text_encoder.to(torch.bfloat16)))
    assert len(encoder.encoded) == 4
    assert sum(1 for f in store.scan_cache(tmp_path / "cache") if f.kind == "prompt") == 4
