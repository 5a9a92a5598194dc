"""hooks.md cannot drift: every code example in it runs in a training run of the tiny trainer (or
of the script in COGVX_EXT_TRAINER), every hook it implements fires, and every "Built-in" list
names exactly the built-in plugins that implement the hook.

Each example becomes a plugin file (with the ``hookimpl`` and ``torch`` imports hooks.md says the
examples assume) whose hook implementations note when they run; a few runs load them side by side
the way a user would.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from tests_support import HERE

from cogvx_ext.plugin.manager import make_plugin_manager
from cogvx_ext.testing import write_dataset

ROOT = Path(__file__).resolve().parents[1]
HOOKS_MD = ROOT / "hooks.md"
FIRED_ENV = "HOOKS_MD_FIRED"  # not COGVX_EXT_*: the train fixture drops those
RECORDER = f"{HERE / 'plugins' / 'recorder.py'}:Recorder"

INSTRUMENT = """

# ---- added by tests/test_hooks_examples.py: note every hook implementation that runs ----
import functools as _functools
import inspect as _inspect
import os as _os


def _note(name):
    with open(_os.environ["HOOKS_MD_FIRED"], "a", encoding="utf-8") as _f:
        _f.write(f"{__name__} {name}\\n")


def _noting(function):
    options = getattr(function, "cogvx_ext_impl")
    name = options.get("specname") or function.__name__
    if _inspect.isgeneratorfunction(function):

        @_functools.wraps(function)
        def wrapped(*args, **kwargs):
            _note(name)
            return (yield from function(*args, **kwargs))
    else:

        @_functools.wraps(function)
        def wrapped(*args, **kwargs):
            _note(name)
            return function(*args, **kwargs)

    return wrapped


for _name, _value in list(globals().items()):
    if _inspect.isfunction(_value) and hasattr(_value, "cogvx_ext_impl"):
        globals()[_name] = _noting(_value)
    elif _inspect.isclass(_value) and _value.__module__ == __name__:
        for _attribute, _member in list(vars(_value).items()):
            if _inspect.isfunction(_member) and hasattr(_member, "cogvx_ext_impl"):
                setattr(_value, _attribute, _noting(_member))
"""


def sections() -> list[tuple[str, str]]:
    """``(hook or "intro", section text)`` for hooks.md's introduction and each hook section."""
    text = HOOKS_MD.read_text(encoding="utf-8")
    parts = re.split(r"^### (cogvx_\w+)\(.*\)$", text, flags=re.M)
    found = [("intro", parts[0])]
    for i in range(1, len(parts), 2):
        body = re.split(r"^## ", parts[i + 1], flags=re.M)[0]
        found.append((parts[i], body))
    return found


def examples() -> dict[str, str]:
    """``{name: code}`` of every python block, named after its section (``cogvx_x`` / ``intro``)."""
    found = {}
    for hook, body in sections():
        blocks = re.findall(r"^```python\n(.*?)^```", body, flags=re.M | re.S)
        for i, code in enumerate(blocks):
            found[hook if i == 0 else f"{hook}_{i}"] = code
    return found


def implemented_hooks(code: str) -> set[str]:
    """The hooks an example implements (function names, or ``specname``)."""
    names = set()
    for match in re.finditer(r"@hookimpl(\((?P<opts>[^)]*)\))?\s*\n\s*def (?P<name>\w+)", code):
        spec = re.search(r'specname="(\w+)"', match.group("opts") or "")
        names.add(spec.group(1) if spec else match.group("name"))
    return names


def plugin_classes(code: str) -> list[str]:
    """Classes with hook implementations (a sampler class is not a plugin): the first is the
    example's plugin; without one, the module is."""

    def is_hookimpl(decorator) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return isinstance(target, ast.Name) and target.id == "hookimpl"

    return [
        node.name
        for node in ast.parse(textwrap.dedent(code)).body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(f, ast.FunctionDef) and any(map(is_hookimpl, f.decorator_list)) for f in node.body)
    ]


@pytest.fixture(scope="module")
def example_plugins(tmp_path_factory) -> dict[str, str]:
    """``{example name: --plugins item}``: each example written as a plugin file."""
    folder = tmp_path_factory.mktemp("hooks_md_examples")
    items = {}
    for name, code in examples().items():
        path = folder / f"hooks_md_{name}.py"
        path.write_text("import torch\n\nfrom cogvx_ext.api import hookimpl\n\n" + code + INSTRUMENT)
        plugins = plugin_classes(code)
        items[name] = f"{path}:{plugins[0]}" if plugins else str(path)
    return items


def fired(path: Path) -> dict[str, set[str]]:
    """``{example name: hooks that ran}`` from the notes the instrumented examples wrote."""
    out: dict[str, set[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else ():
        module, hook = line.split()
        out.setdefault(module.removeprefix("hooks_md_"), set()).add(hook)
    return out


def args_for(model, data, out, *extra, height=96, width=160, frames=9, steps=2):
    return [
        "--pretrained_model_name_or_path", model, "--instance_data_root", data,
        "--caption_column", "prompts.txt", "--video_column", "videos.txt",
        "--height", height, "--width", width, "--max_num_frames", frames, "--fps", 8,
        "--train_batch_size", 1, "--max_train_steps", steps, "--output_dir", out, "--seed", 0,
        "--rank", 4, "--lora_alpha", 4, "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip


def write_npy_dataset(root: Path) -> Path:
    """Clips saved as ``[F, 3, H, W]`` float arrays in [-1, 1] (the cogvx_probe example's format),
    and one listed file that does not exist (so cogvx_clips_skipped fires)."""
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (height, width) in enumerate([(96, 160), (160, 96)]):
        name = f"videos/clip{i}.npy"
        np.save(root / name, rng.uniform(-1, 1, size=(9, 3, height, width)).astype(np.float32))
        names.append(name)
    names.append("videos/missing.npy")
    (root / "videos.txt").write_text("\n".join(names) + "\n")
    (root / "prompts.txt").write_text("\n".join(f"clip {i}" for i in range(len(names))) + "\n")
    return root


@pytest.mark.slow
def test_every_hooks_md_example_runs_and_its_hooks_fire(
    tiny_models, t2v_trainer, train, tmp_path, example_plugins, monkeypatch
):
    notes = tmp_path / "fired.txt"
    env = {FIRED_ENV: str(notes)}
    monkeypatch.setenv(FIRED_ENV, str(notes))
    model = tiny_models["5b"]

    def plugins(*names, extra=()):
        return ",".join(["aspect_bucket", "rope_rescale", *extra, *(example_plugins[n] for n in names)])

    def ok(result):
        assert result.returncode == 0, result.stderr[-5000:]
        return result

    # 1. A bucketed run: set-up, models, encoding, batches, prompts, forwards, state, validation, LoRA.
    general = [
        "intro", "intro_1", "cogvx_add_arguments", "cogvx_configure", "cogvx_provides", "cogvx_requires",
        "cogvx_accelerator_ready", "cogvx_transformer_loaded", "cogvx_vae_loaded", "cogvx_encode_sample",
        "cogvx_batch_sampler", "cogvx_prompt_embeddings", "cogvx_transformer_forward",
        "cogvx_rotary_embedding", "cogvx_transformer_output", "cogvx_step_end", "cogvx_state_dict",
        "cogvx_pipeline_loaded", "cogvx_validation_args", "cogvx_lora_metadata", "cogvx_memory_check",
        "cogvx_train_end",
    ]  # fmt: skip
    data = write_dataset(tmp_path / "data", [(256, 144, 17), (144, 256, 17)], prompts=["a", "b"])
    out = tmp_path / "out"
    run = ["--plugins", plugins(*general), "--validation_prompt", "a test", "--num_validation_videos", 1]
    ok(train(t2v_trainer, args_for(model, data, out, *run, "--checkpointing_steps", 1), env=env))
    # ... resumed, so the state example gets its state back.
    ok(
        train(
            t2v_trainer,
            args_for(model, data, out, *run, "--resume_from_checkpoint", "latest", steps=3),
            env=env,
        )
    )

    # 2. Files of one's own format: probed, targeted and decoded by the examples; a missing one skipped.
    own = ["cogvx_probe", "cogvx_clip_targets", "cogvx_load_pixels", "cogvx_clips_skipped"]
    npy = write_npy_dataset(tmp_path / "npy")
    ok(train(t2v_trainer, args_for(model, npy, tmp_path / "out_npy", "--plugins", plugins(*own)), env=env))

    # 3. A schedule of areas.
    big = write_dataset(tmp_path / "big", [(512, 288, 17)], prompts=["a"])
    staged = args_for(model, big, tmp_path / "out_staged", "--plugins", plugins("cogvx_stages"),
                      height=288, width=512, steps=1)  # fmt: skip
    ok(train(t2v_trainer, staged, env=env))

    # 4. A run that fails.
    failing = args_for(model, data, tmp_path / "out_fail", "--plugins",
                       plugins("cogvx_exception", extra=[RECORDER]), "--recorder_fail_at_step", 1)  # fmt: skip
    result = train(t2v_trainer, failing, env=env)
    assert result.returncode != 0 and "training failed: RuntimeError" in result.stdout

    # 5. The cache command's hooks, answered by the examples.
    from cogvx_ext.cli.cache import run_cache

    prune = ["prune", "--instance_data_root", str(data), "--caption_column", "prompts.txt",
             "--video_column", "videos.txt", "--height", "96", "--width", "160", "--max_num_frames", "9",
             "--plugins", plugins("cogvx_cache_summary", "cogvx_cache_prune")]  # fmt: skip
    assert run_cache(prune) == 0

    seen = fired(notes)
    for name, code in examples().items():
        assert implemented_hooks(code) <= seen.get(name, set()), f"hooks.md example of {name} did not run"
    assert set(examples()) >= {"intro", *general, *own, "cogvx_stages", "cogvx_exception"}


@pytest.mark.slow
def test_the_state_example_counts_right_after_a_resume_on_two_processes(
    tiny_models, t2v_trainer, train, tmp_path, example_plugins
):
    """SeenCounter (cogvx_state_dict's example) is saved by the main process alone, in the middle
    of a step, and read back by both: after a resume each process still counts every batch it ran."""
    data = write_dataset(tmp_path / "data", [(256, 144, 17), (144, 256, 17)] * 2, prompts=list("abcd"))
    out = tmp_path / "out"
    plugins = ["--plugins", f"aspect_bucket,rope_rescale,{example_plugins['cogvx_state_dict']}"]
    env = {FIRED_ENV: str(tmp_path / "fired.txt")}
    first = args_for(tiny_models["5b"], data, out, *plugins, "--checkpointing_steps", 1, steps=2)
    assert train(t2v_trainer, first, nproc=2, env=env).returncode == 0
    resumed = args_for(tiny_models["5b"], data, out, *plugins, "--resume_from_checkpoint", "latest", steps=4)
    result = train(t2v_trainer, resumed, nproc=2, env=env)
    assert result.returncode == 0, result.stderr[-5000:]
    counts = dict(re.findall(r"SeenCounter: process (\d) trained (\d+) batches", result.stdout))
    # Batch size 1, no gradient accumulation: one batch per optimizer step on each process.
    assert counts == {"0": "4", "1": "4"}, result.stdout[-3000:]


def builtin_implementations() -> dict[str, set[str]]:
    pm = make_plugin_manager()
    for ep in metadata.entry_points(group="cogvx_ext"):
        if ep.value.startswith("cogvx_ext_plugins."):
            pm.register(ep.load()(), name=ep.name)
    return {
        name: {i.plugin_name for i in getattr(pm.hook, name).get_hookimpls()} - {"cogvx_ext.defaults"}
        for name in dir(pm.hook)
        if name.startswith("cogvx_") and getattr(pm.hook, name).spec is not None
    }


def test_builtin_lists_name_exactly_the_builtins_that_implement_each_hook():
    actual = builtin_implementations()
    builtins = {name for names in actual.values() for name in names}
    listed = {}
    for hook, body in sections()[1:]:
        bullets = re.findall(r"^- Built-ins?: (.*?)(?=^- |^\s*$|^```)", body, flags=re.M | re.S)
        assert len(bullets) == 1, f"hooks.md: the section of {hook} needs one '- Built-in(s): ...' line"
        listed[hook] = set(re.findall(r"`(\w+)`", bullets[0])) & builtins
    assert listed == {hook: actual[hook] for hook in listed}
    assert set(listed) == set(actual)


def test_every_example_is_valid_python():
    for name, code in examples().items():
        compile(textwrap.dedent(code), f"hooks.md:{name}", "exec")


def test_the_examples_are_found():
    assert len(examples()) >= 25
    assert os.path.isfile(HOOKS_MD)
