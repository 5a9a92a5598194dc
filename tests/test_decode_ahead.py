"""Decode ahead (cogvx_ext.data.decode_ahead): the next clip decodes in a thread while this one
encodes, in the streaming encode (encode_samples) and in ``cogvx-ext cache fill``.

Real clips, the real tiny VAE, the core's decoding and the script's encoding recipe; nothing mocked.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from cogvx_ext import hookimpl
from cogvx_ext.cli.cache import run_cache
from cogvx_ext.data.decode_ahead import ENV, DecodeAhead, load_pixels
from cogvx_ext.data.encoding import encode_samples
from cogvx_ext.data.planning import plan_samples
from cogvx_ext.script.data_formats import read_listing
from cogvx_ext.script.offline import script_data_parser, start_offline_run
from cogvx_ext.script.seams.dataset import ScriptEncoding
from cogvx_ext.testing import build_tiny_model, write_dataset

THREAD = "cogvx-ext decode ahead"
CLIPS = [(96, 64, 9), (64, 96, 9), (64, 64, 9), (96, 64, 13), (64, 96, 9)]  # one odd length: two shapes
DATA_FLAGS = ["--caption_column", "prompts.txt", "--video_column", "videos.txt", "--height", "64",
              "--width", "96", "--max_num_frames", "9", "--bucket_min_side", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("decode_ahead_model"), "5b")


@pytest.fixture(scope="module")
def vae(model_dir):
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX.from_pretrained(model_dir, subfolder="vae").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("decode_ahead_data") / "data", CLIPS)


class Watch:
    """A plugin that records which thread decodes which clip, and can slow the encoder or fail."""

    def __init__(self, encode_seconds: float = 0.0, fail_encode_at: int | None = None, error=RuntimeError):
        self.decoded: list[tuple[str, str]] = []  # (clip name, thread name)
        self.encoded: list[str] = []
        self.encode_seconds = encode_seconds
        self.fail_encode_at = fail_encode_at
        self.error = error

    @hookimpl(wrapper=True)
    def cogvx_load_pixels(self, sample):
        pixels = yield
        self.decoded.append((Path(sample.clip.path).name, threading.current_thread().name))
        return pixels

    @hookimpl(wrapper=True)
    def cogvx_encode_sample(self, sample):
        if self.fail_encode_at is not None and len(self.encoded) == self.fail_encode_at:
            raise self.error(f"watch: the encoder fails at {Path(sample.clip.path).name}")
        encoded = yield
        time.sleep(self.encode_seconds)
        self.encoded.append(Path(sample.clip.path).name)
        return encoded


def planned_run(root: Path, watch: Watch | None = None):
    """An offline run with the core's decoding and the script's encoding recipe, and its samples."""
    argv = ["--instance_data_root", str(root), *DATA_FLAGS, "--plugins", "aspect_bucket,rope_rescale"]
    run = start_offline_run(
        script_data_parser("test", ""), argv, default_plugins="aspect_bucket,rope_rescale"
    )
    run.pm.register(ScriptEncoding(run), name="cogvx_ext.script_encoding")
    if watch is not None:
        run.pm.register(watch, name="watch")
    entries, _ = read_listing(root, "prompts.txt", "videos.txt")
    samples, skipped = plan_samples(run.hook, entries, run.context, progress=False)
    assert not skipped and len(samples) == len(CLIPS)
    return run, samples


def encode_all(root, vae, kind, watch=None, before_encoding=None):
    run, samples = planned_run(root, watch)
    if before_encoding is not None:
        before_encoding(samples)
    torch.manual_seed(0)  # the I2V recipe draws its first-frame noise while encoding
    return encode_samples(run.hook, samples, vae, kind, run.context, 0, 1, progress=False)


def parameters(results) -> list[list[torch.Tensor] | None]:
    return [
        None if r is None else [p.parameters for p in (r if isinstance(r, tuple) else (r,))] for r in results
    ]


def decode_threads(watch: Watch) -> set[str]:
    return {thread for _, thread in watch.decoded}


def no_decode_thread_left() -> bool:
    return not [t for t in threading.enumerate() if t.name == THREAD]


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_decoding_ahead_gives_the_latents_of_one_at_a_time_bit_for_bit(data, vae, kind, monkeypatch):
    monkeypatch.setenv(ENV, "0")
    one_at_a_time = Watch()
    sequential, failed_sequential = encode_all(data, vae, kind, one_at_a_time)
    monkeypatch.delenv(ENV)
    ahead = Watch()
    overlapped, failed_overlapped = encode_all(data, vae, kind, ahead)

    assert decode_threads(one_at_a_time) == {"MainThread"} and decode_threads(ahead) == {THREAD}
    assert ahead.decoded == [(name, THREAD) for name, _ in one_at_a_time.decoded]  # same clips, same order
    assert not failed_sequential and not failed_overlapped
    for a, b in zip(parameters(sequential), parameters(overlapped), strict=True):
        assert len(a) == len(b) == (2 if kind == "i2v" else 1)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert no_decode_thread_left()


def test_a_clip_broken_after_planning_is_skipped_with_the_same_record(data, vae, monkeypatch, tmp_path):
    # A copy of the data whose middle clip is emptied after planning (the probe saw it whole).
    import shutil

    def break_the_middle_clip(samples):
        Path(samples[2].clip.path).write_bytes(b"")

    runs = {}
    for mode in ("0", "1"):
        root = Path(shutil.copytree(data, tmp_path / "data", dirs_exist_ok=True))
        monkeypatch.setenv(ENV, mode)
        runs[mode] = encode_all(root, vae, "t2v", Watch(), before_encoding=break_the_middle_clip)
    (sequential, failed_sequential), (overlapped, failed_overlapped) = runs["0"], runs["1"]
    assert failed_overlapped == failed_sequential
    assert [f.reason for f in failed_overlapped] == ["empty file (0 bytes)"]
    assert (
        [p is None for p in overlapped]
        == [p is None for p in sequential]
        == [False, False, True, False, False]
    )
    for a, b in zip(parameters(sequential), parameters(overlapped)):
        assert (a is None and b is None) or all(torch.equal(x, y) for x, y in zip(a, b))


def test_cache_fill_reports_a_clip_broken_after_planning_with_the_same_lines(
    data, model_dir, monkeypatch, tmp_path, capsys
):
    import shutil

    # A plugin that empties the middle clip when the fill starts encoding (after the plan).
    breaker = tmp_path / "break_middle.py"
    breaker.write_text(
        "from pathlib import Path\n"
        "from cogvx_ext import hookimpl\n"
        "class BreakMiddle:\n"
        "    done = False\n"
        "    @hookimpl(tryfirst=True)\n"
        "    def cogvx_encode_sample(self, sample):\n"
        "        if not self.done:\n"
        "            self.done = True\n"
        "            Path(sample.clip.path).parent.joinpath(sorted(\n"
        "                p.name for p in Path(sample.clip.path).parent.iterdir())[2]).write_bytes(b'')\n"
    )
    outputs = {}
    for mode in ("0", "1"):
        root = tmp_path / f"data_{mode}"
        shutil.copytree(data, root)
        monkeypatch.setenv(ENV, mode)
        flags = ["--instance_data_root", str(root), *DATA_FLAGS, "--pretrained_model_name_or_path", str(model_dir),
                 "--latent_cache_dir", str(tmp_path / f"cache_{mode}"),
                 "--plugins", f"aspect_bucket,rope_rescale,latent_cache,{breaker}:BreakMiddle"]  # fmt: skip
        assert run_cache(["fill", *flags]) == 1  # a clip failed
        captured = capsys.readouterr()
        outputs[mode] = [
            line.replace(str(root), "DATA").replace(str(tmp_path / f"cache_{mode}"), "CACHE")
            for line in (captured.out + captured.err).splitlines()
            if line.startswith("cogvx-ext") and "%|" not in line  # progress bars aside
        ]
    assert outputs["1"] == outputs["0"]
    assert "cogvx-ext: cannot encode DATA/videos/clip_002_64x64x9.mp4: empty file (0 bytes)" in outputs["1"]
    assert any("4 encoded, 1 failed" in line for line in outputs["1"])
    entries = {mode: sorted((tmp_path / f"cache_{mode}").glob("??/*.safetensors")) for mode in ("0", "1")}
    assert [p.name for p in entries["0"]] == [p.name for p in entries["1"]] and len(entries["1"]) == 4
    from safetensors.torch import load_file

    for a, b in zip(entries["0"], entries["1"]):
        assert all(torch.equal(x, load_file(b)[k]) for k, x in load_file(a).items())


def test_the_worker_holds_at_most_one_decoded_clip_beside_the_one_encoding(data):
    # The loop is slow (0.3 s a sample, decoding one of these clips takes milliseconds): unbounded,
    # the worker would decode every clip during the first one's encode.
    run, samples = planned_run(data)
    watch = Watch()
    run.pm.register(watch, name="watch")
    with torch.no_grad(), DecodeAhead(run.hook, samples, run.args, run.context) as ahead:
        for i, sample in enumerate(samples):
            pixels = load_pixels(run.hook, sample, run.args, run.context)
            assert pixels.shape[0] == sample.target.num_frames
            time.sleep(0.3)
            # Taken: this clip; decoded on speculation: the next one, no more.
            assert len(watch.decoded) == min(i + 2, len(samples)), watch.decoded
    assert ahead.peak_held == 1
    assert [name for name, _ in watch.decoded] == [Path(s.clip.path).name for s in samples]


def test_samples_a_cache_answers_are_not_decoded_and_speculation_is_dropped(data):
    run, samples = planned_run(data)
    watch = Watch()
    run.pm.register(watch, name="watch")
    direct = [run.hook.cogvx_load_pixels(sample=s, args=run.args, run=run.context) for s in samples]
    watch.decoded.clear()
    with torch.no_grad(), DecodeAhead(run.hook, samples, run.args, run.context):
        time.sleep(0.2)
        assert watch.decoded == []  # nothing asked yet: nothing decoded (a warm cache decodes nothing)
        for i in (1, 4):  # 0, 2 and 3 answered from a cache
            assert torch.equal(load_pixels(run.hook, samples[i], run.args, run.context), direct[i])
    names = [name for name, _ in watch.decoded]
    # 1 asked, 2 decoded on speculation (dropped), 4 asked; 0 and 3 never decoded.
    assert names == [Path(samples[i].clip.path).name for i in (1, 2, 4)]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_encoder_failure_stops_the_decode_thread(data, vae, error):
    watch = Watch(fail_encode_at=2, error=error)
    with pytest.raises(error, match="the encoder fails at"):
        encode_all(data, vae, "t2v", watch)
    assert no_decode_thread_left()
    assert len(watch.encoded) == 2
    assert len(watch.decoded) <= 3 + 1  # what was asked, and one on speculation


def test_a_decoding_error_reaches_the_loop_as_it_would_have(data, vae, tmp_path):
    class FailDecode:
        @hookimpl(tryfirst=True)
        def cogvx_load_pixels(self, sample):
            if sample.clip.path.endswith("clip_003_96x64x13.mp4"):
                raise ValueError("a plugin's bug while decoding")

    run, samples = planned_run(data)
    run.pm.register(FailDecode(), name="fail_decode")
    watch = Watch()
    run.pm.register(watch, name="watch")
    with pytest.raises(ValueError, match="a plugin's bug while decoding"):
        encode_samples(run.hook, samples, vae, "t2v", run.context, 0, 1, progress=False)
    assert len(watch.encoded) == 3 and no_decode_thread_left()
