"""What users install: the wheel carries every module of the source tree and the start-up line.

The wheel is ``$COGVX_EXT_WHEEL`` when CI has built it already, else one built here from the
checkout with the standard build frontend (sdist first, the wheel from the sdist, as PyPI users
get it).
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import installed_cogvx_ext

REPO = Path(__file__).resolve().parents[1]


def source_modules() -> set[str]:
    """Every file the wheel must hold, as its path inside the wheel."""
    files = {"cogvx_ext.pth"}
    for folder, package in (("cogvx_ext", "cogvx_ext"), ("plugins", "cogvx_ext_plugins")):
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                files.add(f"{package}/{path.relative_to(REPO / folder).as_posix()}")
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("COGVX_EXT_WHEEL")
    if given:
        return Path(given)
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (built,) = out.glob("*.whl")
    return built


def test_the_source_tree_has_subpackages_to_lose():
    # The check below only means something while there are subpackages that a hand-kept list
    # could miss.
    assert {
        "cogvx_ext/trainers/__init__.py",
        "cogvx_ext_plugins/aspect_bucket/__init__.py",
    } <= source_modules()


def test_wheel_holds_every_module_and_the_startup_line(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        missing = sorted(source_modules() - names)
        assert not missing, f"{wheel.name} lacks {missing}"
        assert archive.read("cogvx_ext.pth") == (REPO / "cogvx_ext.pth").read_bytes()
        entry_points = configparser.ConfigParser()
        dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points.read_string(archive.read(dist_info).decode())
    # Every built-in plugin's entry point names a module that the wheel holds.
    for name, value in entry_points["cogvx_ext"].items():
        module = value.split(":")[0].replace(".", "/")
        assert f"{module}.py" in names or f"{module}/__init__.py" in names, name


def test_installed_wheel_is_what_the_tests_import():
    how, problem = installed_cogvx_ext()
    assert problem is None
    if how != "wheel":
        pytest.skip(f"cogvx-ext is installed {how}; CI checks the wheel install")
    installed = {str(f) for f in metadata.files("cogvx-ext")}
    missing = sorted(source_modules() - installed)
    assert not missing, f"the installed cogvx-ext lacks {missing}"


def test_every_builtin_plugin_loads_from_the_installed_package():
    result = subprocess.run(
        [sys.executable, "-m", "cogvx_ext", "plugins"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "aspect_bucket",
        "rope_rescale",
        "posemb_adapt",
        "latent_cache",
        "progressive_resize",
        "multi_scale",
        "snr_shift",
    ):
        assert name in result.stdout


# ---------------------------------------------------------------------------------------------
# Releases: a version tag builds and publishes; the version lives in cogvx_ext/_version.py alone.

RELEASE = REPO / ".github" / "workflows" / "release.yml"


def release_workflow() -> dict:
    import yaml

    workflow = yaml.safe_load(RELEASE.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as true
    return workflow


def test_a_version_tag_builds_and_publishes_with_trusted_publishing():
    workflow = release_workflow()
    assert workflow["on"] == {"push": {"tags": ["v*"]}}
    build, publish = workflow["jobs"]["build"], workflow["jobs"]["publish"]
    assert any("python -m build" in step.get("run", "") for step in build["steps"])
    assert publish["needs"] == "build"
    assert publish["permissions"] == {"id-token": "write"}  # PyPI's OIDC exchange, no stored token
    assert [s["uses"] for s in publish["steps"] if "uses" in s][-1].startswith("pypa/gh-action-pypi-publish@")


@pytest.mark.parametrize("tag_matches", [True, False])
def test_the_release_stops_when_the_tag_is_not_the_version(tag_matches, tmp_path):
    from cogvx_ext import __version__

    (check,) = [s for s in release_workflow()["jobs"]["build"]["steps"] if "_version.py" in s.get("run", "")]
    tag = f"v{__version__}" if tag_matches else f"v{__version__}.post9"
    env_file = tmp_path / "github_env"
    env_file.write_text("")
    result = subprocess.run(
        ["bash", "-e", "-c", check["run"]],
        cwd=REPO,
        env={**os.environ, "GITHUB_REF_NAME": tag, "GITHUB_ENV": str(env_file),
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    if tag_matches:
        assert result.returncode == 0, result.stdout + result.stderr
        assert env_file.read_text() == f"version={__version__}\n"
    else:
        assert result.returncode == 1
        assert f"tag {tag} does not match cogvx_ext/_version.py ({__version__})" in result.stdout


def test_the_wheel_carries_the_one_version(wheel):
    from cogvx_ext import __version__

    assert wheel.name.startswith(f"cogvx_ext-{__version__}-py3-none-any")
    assert (REPO / "pyproject.toml").read_text().count(
        'version = {attr = "cogvx_ext._version.__version__"}'
    ) == 1
