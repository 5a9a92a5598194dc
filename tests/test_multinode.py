"""Two nodes simulated on one machine: two torchrun launches (one process each) that meet at a
local rendezvous, each reading its own copy of the data under another path, sharing one latent
cache directory. The trainer is ours or the diffusers script (COGVX_EXT_TRAINER), as in test_e2e.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_e2e import MIXED, RECORDER, by_event, mixed_dataset, ok, script_args, training_shapes
from tests_support import read_events

from cogvx_ext_plugins.latent_cache import store

pytestmark = pytest.mark.slow

NODES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_copies(tmp_path: Path, clips) -> list[Path]:
    """One data root per node, at different paths. Node 1's copy is made as `cp -r` makes it (new
    modification times), so nothing may depend on the files' times matching across nodes."""
    source = mixed_dataset(tmp_path / "node0" / "data", clips)
    other = tmp_path / "elsewhere" / "node1" / "data"
    shutil.copytree(source, other, copy_function=shutil.copyfile)
    return [source, other]


def launch_nodes(command_of, timeout=600) -> list[subprocess.CompletedProcess]:
    """Start one torchrun per node (``command_of(node)`` gives what follows the launcher flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    port = free_port()
    procs = []
    for node in range(NODES):
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--node_rank", str(node),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                [*launcher, *map(str, command_of(node))],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def cache_entries(cache: Path) -> list[Path]:
    files = list(store.scan_cache(cache))
    assert [f.path for f in files if f.kind == "temp"] == []  # no torn write left behind
    entries = [f.path for f in files if f.kind == "entry"]
    for path in entries:  # whole safetensors files, each under its own key
        tensors, metadata = store.read_entry(path)
        assert metadata[store.META_KEY] == path.stem and tensors, path
    return entries


def test_two_nodes_with_their_own_data_copies_share_one_cache(tiny_models, t2v_trainer, tmp_path):
    clips = [*MIXED[:4], (256, 144, 17)]
    roots = node_copies(tmp_path, clips)
    cache = tmp_path / "shared_cache"

    def train_on(node, name, steps=3):
        args = script_args(
            tiny_models["5b"], roots[node], tmp_path / name, "--latent_cache_dir", cache,
            "--plugins", f"{RECORDER},aspect_bucket,rope_rescale,latent_cache",
            "--recorder_out", tmp_path / name / "ev", steps=steps,
        )  # fmt: skip
        return [t2v_trainer, *args]

    for result in launch_nodes(lambda node: train_on(node, "cold")):
        ok(result)
    ranks = read_events(tmp_path / "cold" / "ev")
    assert sorted(ranks) == ["events-rank0.jsonl", "events-rank1.jsonl"]
    planned = {}
    for events in ranks.values():
        for e in by_event(events, "clip_targets"):
            w, h, f = e["targets"][0]
            planned[os.path.basename(e["path"])] = [(f - 1) // 4 + 1, h // 8, w // 8]
    encoded = [e["path"] for events in ranks.values() for e in by_event(events, "encode_sample")]
    assert sorted(encoded) == sorted(planned)  # each sample encoded once, by one node
    for name, events in ranks.items():
        for e in by_event(events, "encode_sample"):
            assert e["shapes"][0][2:] == planned[e["path"]]
        shapes = training_shapes(events)
        assert len(shapes) == 3 and all(s in planned.values() for s in shapes), name
        outputs = [e for e in by_event(events, "transformer_output") if e["grad"]]
        assert all(e.get("rope_equals_pipeline") for e in outputs), name
    assert len(cache_entries(cache)) == len(clips)  # filled once: one entry per sample

    # The shared cache serves every node and any launch layout: node 1 alone encodes nothing.
    from test_e2e import events_of

    from_one_node = ok(
        subprocess.run(
            [sys.executable, *map(str, train_on(1, "warm"))],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")},
                "HF_HUB_OFFLINE": "1",
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    assert by_event(events_of(tmp_path / "warm" / "ev"), "load_pixels") == [], from_one_node.stderr[-3000:]
    assert len(cache_entries(cache)) == len(clips)


def test_cache_fill_across_two_nodes(tiny_models, tmp_path):
    clips = [(96, 64, 9), (64, 96, 9), (64, 64, 9), (96, 64, 9)]
    roots = [
        mixed_dataset(tmp_path / "node0" / "data", clips),
        tmp_path / "elsewhere" / "node1" / "data",
    ]
    shutil.copytree(roots[0], roots[1], copy_function=shutil.copyfile)
    cache = tmp_path / "shared_cache"

    def fill_on(node):
        return [
            "-m", "cogvx_ext", "cache", "fill", "--pretrained_model_name_or_path", tiny_models["5b"],
            "--instance_data_root", roots[node], "--caption_column", "prompts.txt",
            "--video_column", "videos.txt", "--latent_cache_dir", cache, "--height", 64, "--width", 96,
            "--max_num_frames", 9, "--bucket_min_side", 64,
        ]  # fmt: skip

    results = launch_nodes(fill_on)
    for result in results:
        ok(result)
    summary = "4 sample(s) of 4 clip(s): 0 already cached, 4 encoded"
    lines = [r.stdout for r in results if summary in r.stdout]
    assert len(lines) == 1, [r.stdout + r.stderr[-2000:] for r in results]  # one summary, from rank 0
    assert "(2 processes)" in lines[0]
    assert len(cache_entries(cache)) == len(clips)
    # Filled: the same fill from either node alone finds everything.
    again = launch_nodes(fill_on)
    for result in again:
        ok(result)
    assert any("4 already cached, 0 encoded" in r.stdout for r in again)
