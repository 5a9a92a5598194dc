"""Under `accelerate launch` and `torchrun` a mistake is our one line, once, last, and the launcher
exits 2: not one line per rank followed by accelerate's CalledProcessError traceback or torchrun's
ChildFailedError block and status 1. Real launchers, real processes (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cogvx_ext.base import launchers

HERE = Path(__file__).parent
ECHO = str(HERE / "trainers" / "echo_trainer.py")
FLAG_PLUGIN = str(HERE / "plugins" / "flag_plugin.py")
BIN = Path(sys.executable).parent

ACCELERATE = [str(BIN / "accelerate"), "launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]  # fmt: skip
LAUNCHERS = {
    "accelerate": [*ACCELERATE, "--cpu", "--num_processes", "1"],
    "accelerate 2 processes": [*ACCELERATE, "--multi_gpu", "--num_processes", "2"],
    "torchrun 2 processes": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"],
    "python -m torch.distributed.run": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc_per_node", "2"],
}  # fmt: skip
UNKNOWN_PLUGIN = (
    "cogvx-ext: unknown plugin 'nosuchplugin': installed plugins: aspect_bucket, latent_cache, multi_scale, "
    "posemb_adapt, progressive_resize, rope_rescale, snr_shift (a dotted module path or a path to a .py file also "
    "works)"
)


def launch(command, tmp_path, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    # gloo on CPU; the launcher's folder for the ranks' lines goes under tmp_path, to see it removed.
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    return subprocess.run(
        [*map(str, command)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout
    )


def assert_one_line_last(result, line: str, tmp_path: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-4000:]
    assert lines[-1] == line, result.stderr[-4000:]
    assert lines.count(line) == 1, result.stderr[-4000:]
    assert not any(word in result.stderr for word in ("Traceback", "CalledProcessError", "ChildFailedError"))
    assert not list(tmp_path.glob("cogvx-ext-launch-*"))  # the launcher cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_a_mistake_under_a_launcher_is_one_line_last_and_status_2(tmp_path, launcher):
    result = launch([*LAUNCHERS[launcher], ECHO, "--plugins", "nosuchplugin"], tmp_path)
    assert_one_line_last(result, UNKNOWN_PLUGIN, tmp_path)


@pytest.mark.slow
def test_the_runner_and_the_cogvx_ext_commands_under_a_launcher(tmp_path):
    runner = launch(
        [*LAUNCHERS["accelerate"], "-m", "cogvx_ext", ECHO, "--plugins", "nosuchplugin"], tmp_path
    )
    assert_one_line_last(runner, UNKNOWN_PLUGIN, tmp_path)
    # No --plugins on the command line: the launcher knows the cogvx_ext module.
    plan = launch([*LAUNCHERS["torchrun 2 processes"], "-m", "cogvx_ext", "plan", "--no_such_flag"], tmp_path)
    expected = "cogvx-ext: unrecognized arguments: --no_such_flag (cogvx-ext plan --help lists the flags)"
    assert_one_line_last(plan, expected, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun 2 processes"])
def test_a_failure_that_is_no_mistake_keeps_the_launchers_report(tmp_path, launcher):
    result = launch([*LAUNCHERS[launcher], ECHO, "--plugins", FLAG_PLUGIN, "--fail"], tmp_path)
    assert result.returncode == 1
    assert "echo trainer failing on purpose" in result.stderr
    assert ("CalledProcessError" if launcher == "accelerate" else "ChildFailedError") in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("cogvx-ext:")]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate 2 processes", "torchrun 2 processes"])
def test_the_training_script_under_a_launcher(tiny_models, t2v_trainer, tmp_path, launcher):
    argv = ["--pretrained_model_name_or_path", tiny_models["5b"], "--plugins", "rope_rescale"]
    result = launch([*LAUNCHERS[launcher], t2v_trainer, *argv, "--bucket_token_budget", "9000"], tmp_path)
    expected = "cogvx-ext: --bucket_token_budget belongs to plugin aspect_bucket: add it to --plugins"
    assert_one_line_last(result, expected, tmp_path)


def test_only_a_child_of_the_watching_launcher_hands_its_line_over(tmp_path, monkeypatch):
    monkeypatch.setenv(launchers.ENV_LAUNCHER, f"{os.getpid()}:{tmp_path}")  # we are no child of ourselves
    assert launchers.hand_to_launcher("cogvx-ext: a") is False
    monkeypatch.setenv(launchers.ENV_LAUNCHER, f"{os.getppid()}:{tmp_path}")
    for rank, line in (
        ("2", "cogvx-ext: on every rank"),
        ("10", "cogvx-ext: on one"),
        ("0", "cogvx-ext: on every rank"),
    ):
        monkeypatch.setenv("RANK", rank)
        assert launchers.hand_to_launcher(line) is True
    assert launchers._lines(str(tmp_path)) == [
        "cogvx-ext: on every rank",
        "cogvx-ext: on one",
    ]  # once, rank order
