"""The three ways in (start-up hook, runner, load_trainer), in real processes where it matters."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cogvx_ext
from cogvx_ext import UsageError

HERE = Path(__file__).parent
ECHO = str(HERE / "trainers" / "echo_trainer.py")
FLAG_PLUGIN = str(HERE / "plugins" / "flag_plugin.py")
BIN = Path(sys.executable).parent


def run(cmd, env=None, cwd=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("COGVX_EXT")}
    full_env.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def echoed(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["args"] for line in result.stdout.splitlines() if line.startswith('{"args"')]


def test_startup_hook_adds_plugin_flags_to_the_training_script():
    [args] = echoed(
        run([sys.executable, ECHO, "--plugins", FLAG_PLUGIN, "--height", "96", "--flag_from_plugin", "3"])
    )
    assert args["height"] == 96
    assert args["flag_from_plugin"] == 3
    assert args["configured_by"] == "flag_plugin"


def test_startup_hook_takes_plugins_from_the_environment():
    [args] = echoed(run([sys.executable, ECHO], env={"COGVX_EXT_PLUGINS": FLAG_PLUGIN}))
    assert args["configured_by"] == "flag_plugin"


def test_startup_hook_flags_appear_in_script_help():
    result = run([sys.executable, ECHO, "--plugins", FLAG_PLUGIN, "--help"])
    assert result.returncode == 0
    assert "--flag_from_plugin" in result.stdout
    assert "--plugins LIST" in result.stdout
    assert "Loaded: flag_plugin" in result.stdout


def test_startup_hook_is_off_with_cogvx_ext_disable():
    result = run([sys.executable, ECHO, "--plugins", FLAG_PLUGIN], env={"COGVX_EXT_DISABLE": "1"})
    assert result.returncode == 2
    assert "unrecognized arguments: --plugins" in result.stderr


def test_inactive_process_keeps_argparse_untouched():
    code = "import argparse, sys; print(argparse.ArgumentParser.parse_args.__module__, 'cogvx_ext.script.activation' in sys.modules)"
    result = run([sys.executable, "-c", code])
    assert result.stdout.split() == ["argparse", "False"]


def test_other_parsers_with_plugins_in_argv_are_left_alone():
    # A program that has its own --plugins flag: the hook is active (argv holds --plugins) but
    # this parser is not a training script's get_args(), so it parses as usual.
    code = (
        "import argparse\n"
        "def get_args():\n"
        "    p = argparse.ArgumentParser(); p.add_argument('--plugins'); return p.parse_args()\n"
        "print(get_args().plugins)\n"
    )
    result = run([sys.executable, "-c", code, "--plugins", "nosuchplugin"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nosuchplugin"


def test_environment_alone_leaves_non_training_scripts_alone(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(
        "import argparse\n"
        "def get_args():\n"
        "    p = argparse.ArgumentParser(); p.add_argument('--x', default='1'); return p.parse_args()\n"
        "print(get_args().x)\n"
    )
    result = run([sys.executable, str(script), "--x", "2"], env={"COGVX_EXT_PLUGINS": "nosuchplugin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"


def test_unknown_plugin_is_one_line_and_exit_status_2():
    result = run([sys.executable, ECHO, "--plugins", "nosuchplugin"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cogvx-ext: unknown plugin 'nosuchplugin'")
    assert "aspect_bucket" in lines[0] and "rope_rescale" in lines[0]


@pytest.mark.parametrize("way", ["startup", "runner", "accelerate"])
def test_plugin_file_with_a_syntax_error_is_one_line_and_exit_status_2(tmp_path, way):
    plugin = tmp_path / "typo_plugin.py"
    plugin.write_text("from cogvx_ext import hookimpl\n\n@hookimpl\ndef cogvx_configure(args)\n    pass\n")
    command = {
        "startup": [sys.executable, ECHO],
        "runner": [str(BIN / "cogvx-ext"), "run", ECHO],
        "accelerate": [str(BIN / "accelerate"), *ACCELERATE, ECHO],
    }[way] + ["--plugins", str(plugin)]
    result = run(command)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("cogvx-ext:")]
    assert ours == [
        f"cogvx-ext: plugin '{plugin}' failed to import: SyntaxError: expected ':' ({plugin}, line 4) "
        "(fix it or leave it out of --plugins; COGVX_EXT_TRACE=1 shows the traceback)"
    ]
    assert result.returncode == 2
    if way == "accelerate":  # after accelerate's own notes on its defaults, ours is the last line
        assert result.stderr.strip().splitlines()[-1] == ours[0]
    else:
        assert result.stderr.strip() == ours[0]
    traced = run(command, env={"COGVX_EXT_TRACE": "1"})
    assert "Traceback" in traced.stderr and "SyntaxError" in traced.stderr


def test_activation_is_idempotent():
    from cogvx_ext.script import activation

    activation.activate_from_startup()
    wrapper = argparse.ArgumentParser.parse_args
    activation.activate_from_startup()
    assert argparse.ArgumentParser.parse_args is wrapper
    assert activation._original_parse_args is not wrapper


def test_startup_hook_run_again_loads_each_plugin_once(tmp_path):
    # CPython runs a virtual environment's .pth files twice; here the start-up module runs three
    # times with --plugins on the command line, then a training script parses its arguments: the
    # plugin must be loaded, its flag added and its configure hook run exactly once.
    plugin = tmp_path / "count_calls.py"
    plugin.write_text(
        "from cogvx_ext import hookimpl\n\n"
        "@hookimpl\n"
        "def cogvx_add_arguments(parser):\n"
        "    parser.add_argument('--count_flag', type=int, default=0)\n\n"
        "@hookimpl\n"
        "def cogvx_configure(args):\n"
        "    args.configure_calls = getattr(args, 'configure_calls', 0) + 1\n"
    )
    code = (
        "import importlib, runpy, sys\n"
        "import cogvx_ext._startup as startup\n"
        "importlib.reload(startup)\n"
        "importlib.reload(startup)\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    result = run([sys.executable, "-c", code, ECHO, "--plugins", str(plugin), "--count_flag", "5"])
    [args] = echoed(result)
    assert args["count_flag"] == 5 and args["configure_calls"] == 1


def test_runner_python_dash_m(tmp_path):
    [args] = echoed(
        run([sys.executable, "-m", "cogvx_ext", ECHO, "--plugins", FLAG_PLUGIN, "--width", "160"])
    )
    assert args["width"] == 160 and args["configured_by"] == "flag_plugin"


def test_runner_console_script_without_startup_hook(tmp_path):
    # With the start-up hook disabled the runner alone brings the plugins in.
    result = run(
        [str(BIN / "cogvx-ext"), "run", ECHO, "--plugins", FLAG_PLUGIN], env={"COGVX_EXT_DISABLE": "1"}
    )
    [args] = echoed(result)
    assert args["configured_by"] == "flag_plugin"


def test_runner_unknown_plugin_exit_status():
    result = run([str(BIN / "cogvx-ext"), "run", ECHO, "--plugins", "nosuchplugin"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown plugin 'nosuchplugin'" in result.stderr


def test_load_trainer_returns_module_before_main(capsys):
    trainer = cogvx_ext.load_trainer(ECHO, plugins=[FLAG_PLUGIN], argv=["--height", "64"])
    assert capsys.readouterr().out == ""  # main has not run
    args = trainer.get_args()
    assert args.height == 64 and args.flag_from_plugin == 7
    assert trainer.cogvx_run.plugin_names == ["flag_plugin"]
    trainer.main(args)
    assert json.loads(capsys.readouterr().out)["args"]["configured_by"] == "flag_plugin"


def test_load_trainer_raises_usage_error():
    with pytest.raises(UsageError, match="unknown plugin 'nosuchplugin'"):
        cogvx_ext.load_trainer(ECHO, argv=["--plugins", "nosuchplugin"])


def test_missing_seam_is_named(tmp_path):
    plugin = tmp_path / "sampler_plugin.py"
    plugin.write_text(
        "from cogvx_ext import hookimpl\n\n@hookimpl\ndef cogvx_batch_sampler(samples):\n    return None\n"
    )
    with pytest.raises(UsageError) as info:
        cogvx_ext.load_trainer(ECHO, argv=["--plugins", str(plugin)])
    assert "echo_trainer.py has no module-level 'DataLoader'" in str(info.value)
    assert "sampler_plugin" in str(info.value)


def test_plugin_requirements_stop_the_run_at_start(tmp_path):
    model = tmp_path / "model" / "transformer"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"use_rotary_positional_embeddings": True}))
    argv = [
        "--plugins",
        str(HERE / "plugins" / "needs_rope.py"),
        "--pretrained_model_name_or_path",
        str(model.parent),
    ]
    result = run([sys.executable, ECHO, *argv])
    assert result.returncode == 2
    assert result.stderr.strip() == "cogvx-ext: 5b model: add rope_rescale to --plugins"
    provider = tmp_path / "provides_rope.py"
    provider.write_text(
        "from cogvx_ext import hookimpl\n\n@hookimpl\ndef cogvx_provides():\n    return ['batch_rope']\n"
    )
    [args] = echoed(run([sys.executable, ECHO, *argv, "--plugins", str(provider)]))
    assert args["pretrained_model_name_or_path"] == str(model.parent)


ACCELERATE = ["launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("way", [[], ["-m", "cogvx_ext"]], ids=["startup hook", "runner"])
def test_accelerate_launch_both_ways(way):
    # The launcher's own parser sees --plugins too, and must be left alone.
    result = run(
        [str(BIN / "accelerate"), *ACCELERATE, *way, ECHO, "--plugins", FLAG_PLUGIN, "--height", "32"]
    )
    [args] = echoed(result)
    assert args["height"] == 32 and args["configured_by"] == "flag_plugin"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "python -m torch.distributed.run"])
def test_torchrun_ranks_each_load_the_plugins(launcher):
    cmd = (
        [str(BIN / "torchrun")] if launcher == "torchrun" else [sys.executable, "-m", "torch.distributed.run"]
    )
    result = run(
        [*cmd, "--nproc_per_node", "2", ECHO, "--plugins", FLAG_PLUGIN], env={"OMP_NUM_THREADS": "1"}
    )
    ranks = echoed(result)
    assert len(ranks) == 2
    assert all(r["configured_by"] == "flag_plugin" for r in ranks)


def test_pth_file_is_installed():
    site_dirs = {Path(p) for p in sys.path if p.endswith("site-packages")}
    assert any((d / "cogvx_ext.pth").is_file() for d in site_dirs), (
        "cogvx_ext.pth missing: pip install the package"
    )
    assert shutil.which("cogvx-ext", path=str(BIN))


@pytest.mark.slow
def test_installed_plugin_package_is_found_by_its_entry_point(tmp_path):
    source = tmp_path / "plugin_package"
    shutil.copytree(HERE.parent / "examples" / "plugin_package", source)
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    env = {"PYTHONPATH": str(site)}
    [args] = echoed(run([sys.executable, ECHO, "--plugins", "hello", "--hello_name", "cogvx"], env=env))
    assert args["hello_greeting"] == "hello, cogvx"
    listing = run([str(BIN / "cogvx-ext"), "plugins"], env=env).stdout
    assert "hello" in listing and "0.2.0" in listing and "cogvx_configure" in listing
    # Installed but not named: the run is unchanged.
    [args] = echoed(run([sys.executable, ECHO, "--plugins", FLAG_PLUGIN], env=env))
    assert "hello_greeting" not in args and "hello_name" not in args


def test_plugins_command_fails_and_names_a_broken_installed_plugin(tmp_path):
    site = tmp_path / "site"
    (site / "broken_cogvx_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "broken_cogvx_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-cogvx-plugin\nVersion: 0.1\n"
    )
    (site / "broken_cogvx_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[cogvx_ext]\nbroken = broken_cogvx_plugin:Broken\n"
    )
    (site / "broken_cogvx_plugin.py").write_text("import a_dependency_nobody_installed\n")
    result = run([str(BIN / "cogvx-ext"), "plugins"], env={"PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert "aspect_bucket" in result.stdout  # the others are still listed
    assert (
        "cogvx-ext: plugin 'broken' failed to import: ModuleNotFoundError: "
        "No module named 'a_dependency_nobody_installed'"
    ) in result.stderr
    assert run([str(BIN / "cogvx-ext"), "plugins"]).returncode == 0


@pytest.mark.parametrize("way", ["startup", "runner"])
def test_exception_hook_fires_once_then_the_exception_propagates(way):
    plugin = str(HERE / "plugins" / "exception_reporter.py")
    cmd = [sys.executable, ECHO] if way == "startup" else [sys.executable, "-m", "cogvx_ext", ECHO]
    result = run([*cmd, "--plugins", plugin, "--fail"])
    assert result.returncode == 1
    assert result.stdout.count("exception_reporter saw RuntimeError: echo trainer failing on purpose") == 1
    assert "Traceback" in result.stderr and "RuntimeError: echo trainer failing on purpose" in result.stderr
