"""Plugin mistakes that used to pass unnoticed or drown in argparse's usage block: a plugin that
would never be called, and a plugin's flag given without its plugin. One line, exit status 2, in
the training script (ours or the diffusers one: COGVX_EXT_TRAINER), in `cogvx-ext plan` and in
`cogvx-ext cache fill`. (Under accelerate launch and torchrun: tests/test_launchers.py.)"""

from __future__ import annotations

import sys

import pytest

from cogvx_ext.cli.main import main as cogvx_ext_main
from cogvx_ext.plugin.manager import plugin_flag_owners

UNDECORATED = "def cogvx_clip_targets(clip, args):\n    return []\n"
IN_A_CLASS = (
    "from cogvx_ext import hookimpl\n\n\nclass ShapeLogger:\n    @hookimpl\n    def cogvx_configure(self, args):\n"
    "        pass\n"
)
FLAG_LINE = "cogvx-ext: --bucket_token_budget belongs to plugin aspect_bucket: add it to --plugins"


def one_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, suffix, expected",
    [
        (UNDECORATED, "", "has cogvx_clip_targets without @hookimpl: decorate it with cogvx_ext.hookimpl"),
        (
            IN_A_CLASS,
            "",
            "implements no hook itself; its class ShapeLogger does: use --plugins {path}:ShapeLogger",
        ),
    ],
    ids=["undecorated", "class not named"],
)
def test_the_training_script_refuses_a_plugin_it_would_never_call(
    tiny_models, t2v_trainer, train, tmp_path, source, suffix, expected
):
    path = tmp_path / "my_plugin.py"
    path.write_text(source)
    result = train(
        t2v_trainer,
        ["--pretrained_model_name_or_path", tiny_models["5b"], "--plugins", f"rope_rescale,{path}{suffix}"],
    )
    assert one_line(result) == f"cogvx-ext: plugin '{path}{suffix}' " + expected.format(path=path)


@pytest.mark.slow
def test_the_training_script_names_the_plugin_a_flag_belongs_to(tiny_models, t2v_trainer, train):
    argv = ["--pretrained_model_name_or_path", tiny_models["5b"], "--plugins", "rope_rescale"]
    assert one_line(train(t2v_trainer, [*argv, "--bucket_token_budget", "9000"])) == FLAG_LINE
    assert one_line(train(t2v_trainer, [*argv, "--bucket_token_budget=9000"])) == FLAG_LINE
    # A flag no plugin has is the script's own error, as without cogvx-ext.
    unknown = train(t2v_trainer, [*argv, "--no_such_flag_anywhere", "1"])
    assert unknown.returncode == 2 and "unrecognized arguments: --no_such_flag_anywhere 1" in unknown.stderr


@pytest.mark.parametrize("command", [["plan"], ["cache", "fill"]])
def test_plan_and_cache_fill_name_the_plugin_a_flag_belongs_to(tmp_path, capsys, command):
    argv = [*command, "--instance_data_root", str(tmp_path), "--plugins", "rope_rescale,latent_cache"]
    assert cogvx_ext_main([*argv, "--bucket_token_budget", "9000"]) == 2
    assert capsys.readouterr().err.strip() == FLAG_LINE
    assert cogvx_ext_main([*argv, "--bucket_strict", "--progressive_stages", "160x96:0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cogvx-ext: --bucket_strict belongs to plugin aspect_bucket; --progressive_stages belongs to plugin "
        "progressive_resize: add them to --plugins"
    )


def test_flag_owners_are_looked_up_only_for_unknown_flags():
    assert plugin_flag_owners(["--bucket_token_budget", "9000", "--rope_mode=ntk", "--nope", "x"]) == {
        "--bucket_token_budget": "aspect_bucket",
        "--rope_mode": "rope_rescale",
    }
    assert plugin_flag_owners(["9000", "-x"]) == {}


def test_a_run_that_starts_right_imports_no_other_plugin(tmp_path):
    """Start-up stays cheap: the installed plugins are asked for their flags only on a mistake."""
    import subprocess

    code = (
        "import sys\n"
        "from cogvx_ext.plugin.manager import load_plugins, make_plugin_manager, parse_args_naming_flag_owners,"
        " parse_plugin_list\n"
        "import argparse\n"
        "pm = make_plugin_manager(); load_plugins(pm, parse_plugin_list(['rope_rescale']))\n"
        "parser = argparse.ArgumentParser(); pm.hook.cogvx_add_arguments(parser=parser)\n"
        "parse_args_naming_flag_owners(parser, ['--rope_mode', 'ntk'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('cogvx_ext_plugins.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['cogvx_ext_plugins.rope_rescale']"
