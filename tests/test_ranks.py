"""Ranks preparing data together: what they compare, and how a failure on one stops them all.

The fingerprint tests change one field of one sample at a time: each fails when that field is
left out of what the ranks compare. The RankSync tests run two real processes on a gloo process
group (as torchrun starts them); the end-to-end cases (a failure injected on one rank of a
training run and of a cache fill) are in test_multinode.py.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from cogvx_ext.data.clips import Clip, Sample, Target, VideoInfo
from cogvx_ext.data.ranks import SAMPLE_FIELDS, first_difference, plan_digest, sample_fields

ROOT = "/data"


def sample(**changes) -> Sample:
    clip = dict(index=3, path="/data/videos/a.mp4", prompt="a red square")
    target = dict(
        height=96,
        width=160,
        frame_indices=tuple(range(0, 17, 2)),
        crop=(0, 0, 144, 256),
        tags=(("stage", "0"),),
    )
    info = VideoInfo(width=256, height=144, num_frames=17, fps=8.0)
    clip.update({k: v for k, v in changes.items() if k in clip})
    target.update({k: v for k, v in changes.items() if k in target})
    info = changes.get("info", info)
    return Sample(Clip(info=info, **clip), Target(**target))


# One change per field that makes two samples train differently.
CHANGES = {
    "clip": dict(path="/data/videos/b.mp4"),
    "size": dict(height=160, width=96),
    "frames": dict(frame_indices=tuple(range(1, 18, 2))),  # the same count, other frames
    "crop": dict(crop=(0, 56, 144, 144)),
    "tags": dict(tags=(("stage", "1"),)),
    "listing line": dict(index=4),
    "caption": dict(prompt="a blue square"),
}


def test_every_field_that_makes_samples_differ_is_compared():
    assert set(CHANGES) == set(SAMPLE_FIELDS)


@pytest.mark.parametrize("field", list(CHANGES))
def test_the_plan_digest_changes_with_each_field(field):
    # Fails when `field` is left out of what the ranks compare (cogvx_ext.data.ranks.sample_fields).
    same = [sample(), sample(path="/data/videos/c.mp4")]
    changed = [sample(**CHANGES[field]), sample(path="/data/videos/c.mp4")]
    assert plan_digest(same, ROOT) == plan_digest([sample(), sample(path="/data/videos/c.mp4")], ROOT)
    assert plan_digest(changed, ROOT) != plan_digest(same, ROOT)
    plans = [[sample_fields(s, ROOT) for s in plan] for plan in (same, changed)]
    line = first_difference(plans)
    assert "first difference at sample 0: rank 0: videos/a.mp4 " in line
    assert f"(differs in its {field})" in line


def test_node_local_roots_and_the_probe_s_details_do_not_count():
    # Two nodes mount the data at other places, and one reads the frame times a little differently:
    # each sample is encoded by one rank for all, so nothing trains differently.
    here = sample()
    there = sample(path="/mnt/copy/videos/a.mp4", info=dataclasses.replace(here.clip.info, fps=8.0001))
    assert plan_digest([here], "/data") == plan_digest([there], "/mnt/copy")


# ---- a failure on one rank stops every rank ------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import datetime, os, sys, threading, time
    import torch.distributed as dist
    from cogvx_ext.data.ranks import PeerFailed, RankSync

    scenario, rank = sys.argv[1], int(os.environ["RANK"])
    timeout = datetime.timedelta(seconds=3 if scenario == "silent" else 120)
    dist.init_process_group("gloo", timeout=timeout)
    sync = RankSync()
    sync.meet("the start")  # both ranks come: no wait, no error
    print(f"rank {rank} met", flush=True)
    if rank == 1:
        if scenario != "silent":
            try:
                raise RuntimeError("a plugin's bug")
            except RuntimeError as exc:
                sync.announce(exc)  # what the script's main does on its way out
        # Alive, as NCCL sees a failed peer: a collective would wait for it until its timeout.
        time.sleep(60)
        sys.exit(0)
    started = time.monotonic()
    try:
        if scenario == "poll":
            while True:  # a long loop of this rank's own work
                sync.poll()
                time.sleep(0.01)
        sync.meet("the exchange of latents")
    except PeerFailed as exc:
        print(f"rank 0 stopped after {time.monotonic() - started:.1f} s: {exc}", flush=True)
        os._exit(2)
    os._exit(0)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(scenario: str) -> str:
    """Rank 0's output; rank 1 is ended once rank 0 is done."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, scenario],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        out, _ = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 2, out
        return out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("scenario", ["meet", "poll"])
def test_a_rank_that_fails_stops_the_others_at_once(scenario):
    out = two_ranks(scenario)
    line = out.strip().splitlines()[-1]
    assert line.startswith("rank 0 stopped after ")
    assert line.endswith(": rank 1 failed (RuntimeError; its own output says why), so rank 0 stops too")
    assert float(line.split()[4]) < 5  # rank 1 is still alive: without the store, a wait of 120 s


def test_a_rank_that_never_comes_is_named_at_the_timeout():
    started = time.monotonic()
    out = two_ranks("silent")
    assert time.monotonic() - started < 60
    assert (
        out.strip()
        .splitlines()[-1]
        .endswith(
            ": rank 1 did not reach the exchange of latents within 3 s and said nothing (killed, out of "
            "memory? see its node's log): every rank stops"
        )
    )
