"""The examples stay runnable: the launch script's shell syntax and its cogvx-ext flags."""

import argparse
import re
import subprocess
from pathlib import Path

from cogvx_ext.plugin.manager import load_plugins, make_plugin_manager, parse_plugin_list

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_launch_script_is_valid_shell():
    subprocess.run(["bash", "-n", str(EXAMPLES / "train_16x9_5b.sh")], check=True)


def test_launch_script_uses_only_existing_plugin_flags():
    text = (EXAMPLES / "train_16x9_5b.sh").read_text()
    plugins = re.search(r"^PLUGINS=(\S+)", text, flags=re.M).group(1)
    pm = make_plugin_manager()
    load_plugins(pm, parse_plugin_list([plugins]))
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    known = set(parser._option_string_actions)
    used = set(re.findall(r"(--(?:bucket|rope|validation_resolutions|posemb)\w*)", text))
    assert used and used <= known, used - known
