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
import time
from pathlib import Path

import pytest
from test_e2e import MIXED, RECORDER, by_event, mixed_dataset, ok, script_args, training_shapes
from tests_support import HERE, read_events

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


def start_nodes(command_of) -> list[subprocess.Popen]:
    """One torchrun per node on this machine (``command_of(node)`` gives what follows the launcher flags)."""
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
    return procs


def launch_nodes(command_of, timeout=600) -> list[subprocess.CompletedProcess]:
    """Start one torchrun per node (``command_of(node)`` gives what follows the launcher flags)."""
    procs = start_nodes(command_of)
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


FAIL_ON_RANK = f"{HERE / 'plugins' / 'fail_on_rank.py'}:FailOnRank"
LINGER = 600  # the failed rank stays alive this long: the others must not wait for it


def node_0_then_the_rest(command_of, timeout=300) -> tuple[list[subprocess.CompletedProcess], float]:
    """Start one torchrun per node, wait for node 0 alone, then end the others (a failed rank that
    lingers keeps its node up). Returns the results and when node 0 ended (``time.time()``)."""
    procs = start_nodes(command_of)
    results = []
    try:
        out, err = procs[0].communicate(timeout=timeout)
        ended = time.time()
        results.append(subprocess.CompletedProcess(procs[0].args, procs[0].returncode, out, err))
        for proc in procs[1:]:
            proc.terminate()
            out, err = proc.communicate(timeout=60)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:  # a launcher ends its workers on SIGTERM (they have sessions of their own)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return results, ended


def assert_stopped_together(results, ended, mark: Path, where: str) -> None:
    """Node 0 stopped within seconds of rank 1's failure, on its own line; the failure shown once."""
    node0, node1 = results
    failure = f"fail_on_rank: injected failure in {where} of "
    assert node1.stderr.count(failure) == 1, node1.stderr[-3000:]  # shown once, where it happened
    assert failure not in node0.stderr + node0.stdout
    lines = [line.split("\r")[-1] for line in node0.stderr.splitlines() if "stops too" in line]
    assert lines == [
        "cogvx-ext: rank 1 failed (RuntimeError; its own output says why), so rank 0 stops too"
    ], node0.stderr[-3000:]
    # Rank 0 stopped on a usage line, not a crash: its launcher shows that line last and exits 2
    # (cogvx_ext.base.launchers), where a crash would leave torchrun's report and status 1.
    assert node0.returncode == 2 and node0.stderr.strip().splitlines()[-1] == lines[0], node0.stderr[-3000:]
    assert "Connection closed by peer" not in node0.stderr
    assert ended - float(mark.read_text()) < 60  # a collective would wait for rank 1 until its timeout


@pytest.mark.parametrize("where", ["probe", "load_pixels", "batch_sampler"])
def test_a_failure_on_one_rank_stops_every_rank_within_seconds(tiny_models, t2v_trainer, tmp_path, where):
    # Rank 1 fails while probing (before the ranks compare their plans), decoding (before the
    # latents are exchanged) or making its batch sampler (before accelerator.prepare's collectives),
    # and stays alive as a failed peer does under NCCL.
    roots = node_copies(tmp_path, MIXED[:3])
    mark = tmp_path / "failed_at"

    def train_on(node):
        args = script_args(
            tiny_models["5b"], roots[node], tmp_path / "out", "--plugins", f"aspect_bucket,rope_rescale,{FAIL_ON_RANK}",
            "--fail_on_rank", 1, "--fail_in", where, "--fail_linger", LINGER, "--fail_mark", mark, steps=2,
        )  # fmt: skip
        return [t2v_trainer, *args]

    results, ended = node_0_then_the_rest(train_on)
    assert_stopped_together(results, ended, mark, where)


def test_a_failure_on_one_process_stops_a_cache_fill_within_seconds(tiny_models, tmp_path):
    roots = node_copies(tmp_path, [(96, 64, 9), (64, 96, 9), (64, 64, 9), (96, 64, 9)])
    mark = tmp_path / "failed_at"

    def fill_on(node):
        return [
            "-m", "cogvx_ext", "cache", "fill", "--pretrained_model_name_or_path", tiny_models["5b"],
            "--instance_data_root", roots[node], "--caption_column", "prompts.txt",
            "--video_column", "videos.txt", "--latent_cache_dir", tmp_path / "cache", "--height", 64,
            "--width", 96, "--max_num_frames", 9, "--bucket_min_side", 64,
            "--plugins", f"aspect_bucket,rope_rescale,latent_cache,{FAIL_ON_RANK}", "--fail_on_rank", 1,
            "--fail_in", "encode", "--fail_linger", LINGER, "--fail_mark", mark,
        ]  # fmt: skip

    results, ended = node_0_then_the_rest(fill_on)
    assert_stopped_together(results, ended, mark, "encode")


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
