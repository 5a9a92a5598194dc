"""The plugin manager and the --plugins grammar, in-process."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pytest

from cogvx_ext import UsageError, hookimpl
from cogvx_ext.base.errors import PluginImportError
from cogvx_ext.plugin.manager import (
    CORE_PLUGIN_NAME,
    chosen_hooks,
    installed_plugins,
    load_plugins,
    make_plugin_manager,
    parse_plugin_list,
    plugin_defects,
)

HERE = Path(__file__).parent
FLAG_PLUGIN = str(HERE / "plugins" / "flag_plugin.py")


@pytest.fixture
def pm():
    return make_plugin_manager()


@pytest.mark.parametrize(
    "values, wanted, blocked",
    [
        (["aspect_bucket"], ("aspect_bucket",), set()),
        (["aspect_bucket,rope_rescale"], ("aspect_bucket", "rope_rescale"), set()),
        ([" a , ,b ", "a"], ("a", "b"), set()),
        (["a,b", "no:a"], ("b",), {"a"}),
        (["no:b", "a,b"], ("a",), {"b"}),
        (["./x/my_plugin.py,no:my_plugin"], (), {"my_plugin"}),
        (["pkg.mod"], ("pkg.mod",), set()),
        ([None, ""], (), set()),
    ],
)
def test_grammar(values, wanted, blocked):
    choice = parse_plugin_list(values)
    assert choice.wanted == wanted
    assert choice.blocked == blocked


def test_core_defaults_are_not_chosen_hooks(pm):
    assert pm.has_plugin(CORE_PLUGIN_NAME)
    assert chosen_hooks(pm) == set()


def test_entry_point_name_loads_the_builtin(pm):
    assert {"aspect_bucket", "rope_rescale", "posemb_adapt", "latent_cache"} <= set(installed_plugins())
    names = load_plugins(pm, parse_plugin_list(["rope_rescale"]))
    assert names == ["rope_rescale"]
    assert "cogvx_rotary_embedding" in chosen_hooks(pm)


def test_class_plugins_get_a_fresh_instance_per_manager():
    first, second = make_plugin_manager(), make_plugin_manager()
    load_plugins(first, parse_plugin_list(["rope_rescale"]))
    load_plugins(second, parse_plugin_list(["rope_rescale"]))
    a, b = first.get_plugin("rope_rescale"), second.get_plugin("rope_rescale")
    assert type(a) is type(b) and a is not b


def test_py_file_is_imported_as_a_real_module(pm):
    names = load_plugins(pm, parse_plugin_list([FLAG_PLUGIN]))
    assert names == ["flag_plugin"]
    module = sys.modules["flag_plugin"]
    assert Path(module.__file__).resolve() == Path(FLAG_PLUGIN).resolve()
    assert str(Path(FLAG_PLUGIN).parent) not in sys.path  # only on sys.path while importing
    parser = argparse.ArgumentParser()
    pm.hook.cogvx_add_arguments(parser=parser)
    assert parser.parse_args([]).flag_from_plugin == 7


def test_dotted_module(pm, tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "shapes.py").write_text(
        textwrap.dedent(
            """
            from cogvx_ext import hookimpl

            @hookimpl
            def cogvx_configure(args):
                args.seen = True
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins(pm, parse_plugin_list(["userpkg.shapes"])) == ["userpkg.shapes"]
    args = argparse.Namespace()
    pm.hook.cogvx_configure(args=args)
    assert args.seen is True


def test_blocked_name_is_not_loaded(pm):
    assert load_plugins(pm, parse_plugin_list(["rope_rescale,aspect_bucket", "no:rope_rescale"])) == [
        "aspect_bucket"
    ]
    assert not pm.has_plugin("rope_rescale")


@pytest.mark.parametrize(
    "item, expected",
    [
        (
            "nosuchplugin",
            "unknown plugin 'nosuchplugin': installed plugins: aspect_bucket, latent_cache, multi_scale, posemb_adapt, "
            "progressive_resize, rope_rescale, snr_shift",
        ),
        ("rope_rescal", "unknown plugin 'rope_rescal': did you mean 'rope_rescale'?"),
        ("no_such_pkg.mod", "unknown plugin 'no_such_pkg.mod'"),
        ("./missing_plugin.py", "plugin file './missing_plugin.py' does not exist"),
        (
            str(HERE / "plugins" / "misspelled_hook.py"),
            "unknown hook 'cogvx_configur' (did you mean 'cogvx_configure'?)",
        ),
        (str(HERE / "plugins" / "wrong_argument.py"), "its cogvx_configure takes argument(s) {'arguments'}"),
    ],
)
def test_user_mistakes_are_one_line_usage_errors(pm, item, expected):
    with pytest.raises(UsageError) as info:
        load_plugins(pm, parse_plugin_list([item]))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import not_a_module_anywhere\n", "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
        ("def broken(:\n    pass\n", "SyntaxError: "),
        ("raise RuntimeError('no GPU here\\nsecond line')\n", "RuntimeError: no GPU here"),
    ],
)
def test_broken_plugin_import_is_one_line_naming_the_plugin(pm, tmp_path, source, expected):
    path = tmp_path / f"broken_plugin_{abs(hash(source))}.py"
    path.write_text(source)
    with pytest.raises(PluginImportError) as info:
        load_plugins(pm, parse_plugin_list([str(path)]))
    message = str(info.value)
    assert f"plugin '{path}' failed to import: {expected}" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, Exception)  # kept for COGVX_EXT_TRACE=1


def test_inline_class_plugin_and_firstresult_order(pm):
    class Decides:
        @hookimpl
        def cogvx_rotary_embedding(self, latent_shape):
            return ("mine", latent_shape)

    pm.register(Decides(), name="decides")
    assert pm.hook.cogvx_rotary_embedding(model=None, latent_shape=(1, 2, 3), device="cpu") == (
        "mine",
        (1, 2, 3),
    )
    assert chosen_hooks(pm) == {"cogvx_rotary_embedding"}


def test_module_attribute_picks_a_class_instantiated_per_run():
    recorder = str(HERE / "plugins" / "recorder.py") + ":Recorder"
    first, second = make_plugin_manager(), make_plugin_manager()
    assert load_plugins(first, parse_plugin_list([recorder])) == ["recorder:Recorder"]
    load_plugins(second, parse_plugin_list([recorder]))
    a, b = first.get_plugin("recorder:Recorder"), second.get_plugin("recorder:Recorder")
    assert type(a).__name__ == "Recorder" and a is not b
    with pytest.raises(UsageError, match="has no attribute 'Nope'"):
        load_plugins(
            make_plugin_manager(), parse_plugin_list([str(HERE / "plugins" / "recorder.py") + ":Nope"])
        )


NEVER_CALLED = {
    "undecorated": (
        "def cogvx_clip_targets(clip, args):\n    return []\n",
        "",
        "has cogvx_clip_targets without @hookimpl: decorate it with cogvx_ext.hookimpl",
    ),
    "undecorated method": (
        "from cogvx_ext import hookimpl\n\nclass Half:\n    @hookimpl\n    def cogvx_configure(self, args):\n"
        "        pass\n\n    def cogvx_add_arguments(self, parser):\n        pass\n\n"
        "    def cogvx_clip_target(self, clip):\n        pass\n",
        ":Half",
        "has cogvx_add_arguments without @hookimpl: decorate it with cogvx_ext.hookimpl; has "
        "cogvx_clip_target without @hookimpl, and no hook has that name (did you mean 'cogvx_clip_targets'?)",
    ),
    "class not chosen": (
        "from cogvx_ext import hookimpl\n\nclass ShapeLogger:\n    @hookimpl\n    def cogvx_configure(self, args):\n"
        "        pass\n",
        "",
        "implements no hook itself; its class ShapeLogger does: use --plugins {path}:ShapeLogger",
    ),
    "no hook": ("WIDTH = 720\n", "", "implements no hook: hooks are functions or methods named after a hook"),
    "chosen class without hooks": (
        "class Empty:\n    pass\n",
        ":Empty",
        "implements no hook: hooks are functions or methods named after a hook",
    ),
}


@pytest.mark.parametrize("case", list(NEVER_CALLED))
def test_a_plugin_that_would_never_be_called_is_refused_naming_why(pm, tmp_path, case):
    source, suffix, expected = NEVER_CALLED[case]
    path = tmp_path / f"never_called_{case.replace(' ', '_')}.py"
    path.write_text(source)
    item = f"{path}{suffix}"
    with pytest.raises(UsageError) as info:
        load_plugins(pm, parse_plugin_list([item]))
    message = str(info.value)
    assert message.startswith(f"plugin '{item}' " + expected.format(path=path)), message
    assert "\n" not in message
    assert plugin_defects(pm.get_plugin(CORE_PLUGIN_NAME)) == []  # the core's defaults are sound


def test_every_installed_plugin_is_free_of_defects():
    for name, entry_point in installed_plugins().items():
        assert plugin_defects(entry_point.load(), name) == [], name
