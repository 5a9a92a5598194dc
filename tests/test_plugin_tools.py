"""Tools for plugin authors: ``cogvx-ext plugins --check`` and ``cogvx-ext new-plugin``."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from tests_support import HERE

from cogvx_ext.cli.main import main
from cogvx_ext.plugin import hookdoc
from cogvx_ext.plugin.manager import plugin_defects

EXAMPLES = HERE.parent / hookdoc.EXAMPLES


def write_plugin(folder: Path, name: str, code: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text("from cogvx_ext import hookimpl\n\n" + textwrap.dedent(code))
    return path


def check(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["plugins", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


# ---------------------------------------------------------------------------------------------
# plugin_defects


DEFECTS = {
    "misspelled_hook": (
        """
        @hookimpl
        def cogvx_configur(args):
            pass
        """,
        ["cogvx_configur is not a hook (did you mean 'cogvx_configure'?)"],
    ),
    "wrong_argument": (
        """
        @hookimpl
        def cogvx_configure(arguments):
            pass
        """,
        [
            "cogvx_configure takes 'arguments', which cogvx_configure does not have (did you mean 'args'? it has: args, run)"
        ],
    ),
    "close_argument": (
        """
        class Plugin:
            @hookimpl
            def cogvx_step_end(self, steps, logs):
                pass
        """,
        [
            "cogvx_step_end takes 'steps', which cogvx_step_end does not have "
            "(did you mean 'step'? it has: step, logs, accelerator, run)"
        ],
    ),
    "unmarked": (
        """
        @hookimpl
        def cogvx_configure(args):
            pass


        def cogvx_add_arguments(parser):
            parser.add_argument("--never_added")
        """,
        ["has cogvx_add_arguments without @hookimpl: decorate it with cogvx_ext.hookimpl"],
    ),
    "default_argument": (
        """
        @hookimpl
        def cogvx_configure(args=None):
            pass
        """,
        ["cogvx_configure gives 'args' a default: pluggy never passes such an argument (remove the default)"],
    ),
    "wrapper_without_yield": (
        """
        @hookimpl(wrapper=True)
        def cogvx_batch_sampler(samples):
            return None
        """,
        [
            "cogvx_batch_sampler is a wrapper but does not yield "
            "(a wrapper is `result = yield`, then `return result`)"
        ],
    ),
    "specname": (
        """
        @hookimpl(specname="cogvx_encode_samples")
        def store(sample):
            pass
        """,
        ["store (for cogvx_encode_samples) is not a hook (did you mean 'cogvx_encode_sample'?)"],
    ),
    "no_hooks": (
        """
        def helper():
            pass
        """,
        [
            "implements no hook: hooks are functions or methods named after a hook in hooks.md and "
            "decorated with cogvx_ext.hookimpl"
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_plugin_defects_names_each_defect(tmp_path, monkeypatch, name):
    code, expected = DEFECTS[name]
    monkeypatch.syspath_prepend(str(tmp_path))
    write_plugin(tmp_path, f"defect_{name}", code)
    module = __import__(f"defect_{name}")
    plugin = getattr(module, "Plugin", module)
    assert plugin_defects(plugin) == expected


def test_imported_helpers_are_not_the_plugins_defects(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_plugin(
        tmp_path, "imports_a_helper", "from cogvx_ext.plugin.hookspecs import cogvx_configure as cogvx_x\n"
    )
    module = __import__("imports_a_helper")
    assert plugin_defects(module) == [
        "implements no hook: hooks are functions or methods named after a hook in hooks.md and "
        "decorated with cogvx_ext.hookimpl"
    ]


def test_the_built_ins_and_the_hook_examples_have_no_defect():
    for entry_point in metadata.entry_points(group="cogvx_ext"):
        if entry_point.value.startswith(hookdoc.BUILTIN_PACKAGE + "."):
            assert plugin_defects(entry_point.load()) == [], entry_point.name
    for example in hookdoc.read_examples(EXAMPLES).values():
        report = main(["plugins", "--check", example.plugin_item])
        assert report == 0, example.path


# ---------------------------------------------------------------------------------------------
# cogvx-ext plugins --check


def test_check_reports_a_plugin_file(capsys):
    status, out, err = check(capsys, "--check", str(EXAMPLES / "cogvx_add_arguments.py"))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"cogvx_add_arguments  ({EXAMPLES / 'cogvx_add_arguments.py'}): ok",
        "    A flag of the plugin's own, in a group named after the plugin.",
        "    hooks: cogvx_add_arguments",
        "    flags: --log_shapes_every",
    ]


@pytest.mark.parametrize(
    "item",
    [
        "aspect_bucket",
        "cogvx_ext_plugins.rope_rescale:RopeRescale",
        f"{EXAMPLES / 'cogvx_state_dict.py'}:ForwardCounter",
    ],
)
def test_check_takes_what_plugins_takes(capsys, item):
    status, out, err = check(capsys, item)  # `cogvx-ext plugins ITEM` is `--check ITEM`
    assert status == 0 and err == "" and out.splitlines()[0].endswith(f"({item}): ok")


def test_check_reports_every_defect_with_exit_status_2(tmp_path, capsys):
    path = write_plugin(
        tmp_path, "two_defects_for_check", DEFECTS["misspelled_hook"][0] + DEFECTS["unmarked"][0]
    )
    status, out, err = check(capsys, "--check", str(path))
    assert status == 2
    assert "2 defect(s)" in out.splitlines()[0]
    assert err.splitlines() == [
        "cogvx-ext: plugin 'two_defects_for_check': has cogvx_add_arguments without @hookimpl: "
        "decorate it with cogvx_ext.hookimpl",
        "cogvx-ext: plugin 'two_defects_for_check': cogvx_configur is not a hook (did you mean 'cogvx_configure'?)",
    ]


def test_check_reports_an_import_error(tmp_path, capsys):
    path = tmp_path / "broken_for_check.py"
    path.write_text("import a_module_nobody_installed\n")
    status, _, err = check(capsys, "--check", str(path))
    assert status == 2
    assert err == (
        f"cogvx-ext: plugin '{path}' failed to import: ModuleNotFoundError: No module named "
        "'a_module_nobody_installed' (fix it or leave it out of --plugins; COGVX_EXT_TRACE=1 shows the traceback)\n"
    )


def test_check_reports_an_unknown_name(capsys):
    status, _, err = check(capsys, "--check", "aspect_bucket,aspect_buckets")
    assert status == 2
    assert err.startswith(
        "cogvx-ext: unknown plugin 'aspect_buckets': did you mean 'aspect_bucket'? installed plugins:"
    )


def test_check_as_json(capsys):
    status, out, _ = check(capsys, "--json", "--check", "rope_rescale")
    [report] = json.loads(out)
    assert status == 0 and report["defects"] == [] and "--rope_mode" in report["flags"]


# ---------------------------------------------------------------------------------------------
# cogvx-ext new-plugin


def test_new_plugin_refuses_a_bad_name_a_taken_name_and_a_full_folder(tmp_path, capsys):
    assert main(["new-plugin", "Shape-Logger", "--dir", str(tmp_path / "a")]) == 2
    assert main(["new-plugin", "aspect_bucket", "--dir", str(tmp_path / "b")]) == 2
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert main(["new-plugin", "shape_logger", "--dir", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "cogvx-ext: plugin name 'Shape-Logger': use lower-case letters, digits and underscores, starting "
        "with a letter (e.g. shape_logger)",
        "cogvx-ext: plugin name 'aspect_bucket': an installed plugin has it already (cogvx-ext plugins): "
        "choose another",
        f"cogvx-ext: {tmp_path / 'c'} exists and is not an empty folder: choose another --dir",
    ]
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine" and not (tmp_path / "a").exists()


def fresh_venv(folder: Path) -> Path:
    """A new virtual environment that sees this interpreter's packages (torch, cogvx-ext, pytest, pip,
    setuptools) through a .pth file, as --system-site-packages would see a system's: what it installs
    goes into its own site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({path!r})" for path in site.getsitepackages()]
    (Path(own) / "zzz_parent_environment.pth").write_text("\n".join(lines) + "\n")
    return python


@pytest.mark.slow
def test_new_plugin_package_installs_passes_its_test_and_loads_by_name(tmp_path):
    package = tmp_path / "package"
    generated = subprocess.run(
        [sys.executable, "-m", "cogvx_ext", "new-plugin", "note_taker", "--dir", str(package)],
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == (
        f"wrote {package}: pip install {package}; pytest {package}; then train with --plugins note_taker\n"
    )
    python = fresh_venv(tmp_path / "venv")

    def run(*command):
        result = subprocess.run(
            [str(python), *map(str, command)], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
        return result

    # Offline: the build backend and cogvx-ext come from the environment.
    run("-m", "pip", "install", "--no-build-isolation", "--no-index", "--quiet", package)
    assert (
        "cogvx_ext_note_taker"
        in run("-c", "import cogvx_ext_note_taker; print(cogvx_ext_note_taker.__name__)").stdout
    )
    checked = run("-m", "cogvx_ext", "plugins", "--check", "note_taker")
    assert checked.stdout.splitlines()[2:] == [
        "    hooks: cogvx_add_arguments, cogvx_lora_metadata",
        "    flags: --note_taker_note",
    ]

    # Its own test trains a tiny model on the minimal trainer with --plugins note_taker.
    inner = tmp_path / "inner"
    tested = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", inner, package)
    assert "1 passed" in tested.stdout
    (record_path,) = inner.rglob("cogvx_ext.json")
    record = json.loads(record_path.read_text())
    assert record["plugins"] == ["note_taker"] and record["settings"] == {"note_taker_note": "first try"}
    # Not installed into this test run's environment: --plugins note_taker is unknown here.
    assert "note_taker" not in {ep.name for ep in metadata.entry_points(group="cogvx_ext")}
