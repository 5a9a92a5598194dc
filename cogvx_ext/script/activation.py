"""How cogvx-ext gets into an unmodified training script: three ways in, one behaviour.

1. Start-up hook: ``cogvx_ext.pth`` calls :func:`activate_from_startup` when the command line
   holds ``--plugins`` (or ``COGVX_EXT_PLUGINS`` is set). The script runs as ``__main__``.
2. Runner: ``cogvx-ext run SCRIPT ...`` / ``python -m cogvx_ext SCRIPT ...`` load the script as a
   module under its own name (so its ``if __name__ == "__main__"`` block does not run).
3. Python: :func:`load_trainer` does what the runner does and hands the module back.

All three meet in the script's own ``get_args()``: ``ArgumentParser.parse_args`` is wrapped, and
when it is called from a training script's ``get_args`` the run starts there (plugins loaded,
flags added, arguments parsed, ``cogvx_configure``, requirements checked, seams installed).
Every other parser in the process, the accelerate and torchrun launchers' included, goes straight
to argparse.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cogvx_ext.base.errors import UsageError, report_usage_error

_original_parse_args = argparse.ArgumentParser.parse_args
_registered: dict[int, _Registration] = {}  # id(module globals) -> how that script was loaded
_startup_active = False
_module_counter = itertools.count(1)


@dataclass
class _Registration:
    module: ModuleType
    plugins: list[str] = field(default_factory=list)
    argv: list[str] | None = None
    run: Run | None = None


class Run:
    """What one training run shares: the plugin manager, the parsed arguments, the loaded models.

    One per script run (a fresh plugin manager each time); the seams and the core keep their
    per-run state here, never in module globals. ``context`` is the part plugins see (the hooks'
    ``run`` argument): the arguments and the model live there.
    """

    def __init__(self, module: ModuleType, pm: Any, plugin_names: list[str]):
        from cogvx_ext.data.context import RunContext

        self.module = module
        self.script = getattr(module, "__file__", None) or "<script>"
        self.pm = pm
        self.hook = pm.hook
        self.plugin_names = plugin_names
        self.context = RunContext("train", plugins=plugin_names)
        self.accelerator = None
        self.transformer = None
        self.vae = None
        self.dataset = None
        self.rank_sync = None  # cogvx_ext.data.ranks.RankSync, from the data preparation on
        self.requirements_checked = False
        self.chosen: set[str] = set()  # hooks implemented by chosen plugins; set by seams.install
        self.kind = "t2v"
        self.prompts_prepared = False
        self.text_encoder_offloaded = None
        self.zero3_lora = None  # the whole LoRA at the last step, for the final save (cogvx_ext.script.zero3)
        self.logged_step = None  # the step of the script's last accelerator.log: validation folders
        self.progress_bar = None  # the script's "Steps" bar, which shows the plugins' logged values too
        self.validation_slugs: dict[str, str] = {}  # file-name form of each validation prompt -> prompt
        self.passed_final_save_barrier = False  # cogvx_ext.script.seams.train_end

    @property
    def args(self) -> argparse.Namespace | None:
        return self.context.args

    @args.setter
    def args(self, value: argparse.Namespace) -> None:
        self.context.args = value

    @property
    def model(self):
        """cogvx_ext.model.facts.ModelInfo, once known."""
        return self.context.model

    @model.setter
    def model(self, value) -> None:
        self.context.model = value

    def uses(self, hook_name: str) -> bool:
        """Whether a plugin the user chose (not a core default) implements this hook."""
        from cogvx_ext.plugin.manager import chosen_hooks

        return hook_name in chosen_hooks(self.pm)

    def check_requirements(self) -> None:
        """Stop at start when a plugin needs a capability no chosen plugin provides."""
        if self.model is None or self.requirements_checked:
            return
        self.requirements_checked = True
        from cogvx_ext.data.contracts import check_requirements

        check_requirements(self.hook, self.context)


def activate_from_startup() -> None:
    """Called by the .pth start-up hook; idempotent."""
    global _startup_active
    _startup_active = True
    _report_version_floor()
    _install_parse_args_wrapper()


def _report_version_floor() -> None:
    """The script's own imports run before its get_args: an ImportError there that says the
    installed diffusers is too old for the script (its check_min_version) or cannot import
    CogVideoX with the installed transformers becomes one line saying what to install
    (cogvx_ext.script.floors), exit status 2. Everything else goes on to the previous hook."""
    previous = sys.excepthook

    def excepthook(exc_type, exc, traceback):
        from cogvx_ext.script.floors import from_import_error

        main = sys.modules.get("__main__")
        script = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv else "")
        problem = from_import_error(exc, script) if script.endswith(".py") else None
        if problem is None:
            return previous(exc_type, exc, traceback)
        report_usage_error(UsageError(problem))
        os._exit(2)  # what the interpreter sets after a hook is 1; nothing else has started yet

    sys.excepthook = excepthook


def _install_parse_args_wrapper() -> None:
    if argparse.ArgumentParser.parse_args is not _parse_args_with_plugins:
        argparse.ArgumentParser.parse_args = _parse_args_with_plugins


def _parse_args_with_plugins(self, args=None, namespace=None):
    registration = _registration_for_caller(sys._getframe(1), args)
    if registration is None:
        return _original_parse_args(self, args, namespace)
    argv = list(args) if args is not None else registration.argv
    if argv is None:
        argv = sys.argv[1:]
    try:
        registration.run = start_run(self, registration, argv, namespace)
    except UsageError as exc:
        if registration.module is not sys.modules.get("__main__"):
            raise  # load_trainer and the runner report it themselves
        _exit_with(exc)
    return registration.run.args


def _registration_for_caller(frame, args) -> _Registration | None:
    """The training script whose get_args() is calling, or None for any other parser."""
    if frame.f_code.co_name != "get_args":
        return None
    registration = _registered.get(id(frame.f_globals))
    if registration is not None:
        return registration
    if not _startup_active or args is not None:
        return None
    main = sys.modules.get("__main__")
    if main is None or frame.f_globals is not main.__dict__:
        return None
    # Other programs may have a get_args() and even a --plugins flag of their own; a training
    # script also defines main() and VideoDataset.
    if not looks_like_trainer(main.__dict__):
        return None
    registration = _Registration(module=main)
    _registered[id(main.__dict__)] = registration
    return registration


def looks_like_trainer(namespace: dict) -> bool:
    return all(callable(namespace.get(name)) for name in ("get_args", "main", "VideoDataset"))


def _exit_with(exc: UsageError) -> None:
    report_usage_error(exc)
    raise SystemExit(2)


def start_run(
    parser: argparse.ArgumentParser, registration: _Registration, argv: list[str], namespace=None
) -> Run:
    """Load the plugins, let them add flags, parse, configure, check, and install the seams."""
    from cogvx_ext.model.facts import ModelInfo
    from cogvx_ext.plugin.manager import (
        ENV_PLUGINS,
        chosen_hooks,
        load_plugins,
        make_plugin_manager,
        parse_args_naming_flag_owners,
        parse_plugin_list,
        plugins_flag_values,
    )
    from cogvx_ext.plugin.memory_check import check_before_loading
    from cogvx_ext.script import seams
    from cogvx_ext.script.data_formats import (
        add_data_format_arguments,
        check_data_source,
        check_unpaired_flag,
    )
    from cogvx_ext.script.resume import add_resume_arguments, check_resume
    from cogvx_ext.script.seams.kinds import DATA_HOOKS

    choice = parse_plugin_list(
        [os.environ.get(ENV_PLUGINS), *registration.plugins, *plugins_flag_values(argv)]
    )
    pm = make_plugin_manager()
    run = Run(registration.module, pm, load_plugins(pm, choice))
    plugins_flag_added = not _has_option(parser, "--plugins")
    if plugins_flag_added:
        parser.add_argument(
            "--plugins",
            action="append",
            metavar="LIST",
            help="cogvx-ext plugins to use: comma list of names, no:NAME, dotted modules or .py files "
            f"(also ${ENV_PLUGINS}). Loaded: {', '.join(run.plugin_names) or 'none'}.",
        )
    add_data_format_arguments(parser)
    add_resume_arguments(parser)
    run.hook.cogvx_add_arguments(parser=parser)
    run.args = parse_args_naming_flag_owners(parser, argv, namespace)
    if plugins_flag_added:
        # The scripts hand vars(args) to their trackers, and tensorboard's takes numbers, strings and
        # booleans only: the list that action="append" leaves stopped every --report_to tensorboard run.
        run.args.plugins = ",".join(run.plugin_names)
    run.hook.cogvx_configure(args=run.args, run=run.context)
    run.context.ask_stages(run.hook)  # once: every later hook sees this answer (run.stages)
    run.model = _model_info_from_args(run.args, ModelInfo)
    run.check_requirements()
    check_before_loading(pm, run.context)
    # What the arguments and files already tell, before the script loads any model (minutes for a
    # real 5b) rather than at the first checkpoint or the first clip.
    check_output_dir(run.args)
    check_resume(pm, run.plugin_names, run.context)
    check_unpaired_flag(run.args, data_plugin=bool(chosen_hooks(pm) & set(DATA_HOOKS)))
    check_data_source(run.args)
    seams.install(run)
    return run


def check_output_dir(args: argparse.Namespace) -> None:
    """Stop when ``--output_dir`` cannot take files: found otherwise at the first checkpoint (hours
    in) or at the final save. A folder that does not exist yet is created by the script."""
    from cogvx_ext.base.io import folder_write_problem

    output_dir = getattr(args, "output_dir", None)
    problem = folder_write_problem(output_dir) if output_dir else None
    if problem:
        raise UsageError(
            f"--output_dir {output_dir} {problem}; the checkpoints and the LoRA are saved there: "
            "give a folder you can write to"
        )


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return option in parser._option_string_actions


def _model_info_from_args(args: argparse.Namespace, model_info_cls):
    """The transformer config, if it can be read without loading anything (local or HF cache)."""
    path = getattr(args, "pretrained_model_name_or_path", None)
    if not path:
        return None
    info = model_info_cls.from_pretrained(path)
    if info is not None:
        return info
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            path, "transformer/config.json", revision=getattr(args, "revision", None)
        )
    except Exception:  # an unusual repo id or cache layout: check after the model loads instead
        return None
    if isinstance(cached, str):
        import json

        with open(cached, encoding="utf-8") as f:
            return model_info_cls.from_config(json.load(f))
    return None


def load_trainer(
    script_path: str | os.PathLike, plugins: list[str] | None = None, argv: list[str] | None = None
):
    """Load a training script as a module with the plugins installed and ``main`` not yet run.

    ``argv`` is the script's command line without the program name (default: ``sys.argv[1:]``);
    it may hold ``--plugins`` like any command line. The arguments are parsed now: call
    ``module.main(module.get_args())`` to train. The run (plugin manager, arguments, models) is
    ``module.cogvx_run``. Raises ``cogvx_ext.UsageError`` for a user mistake.
    """
    from cogvx_ext.script.floors import from_import_error

    path = Path(script_path).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"training script '{script_path}' does not exist")
    name = path.stem if path.stem not in sys.modules else f"{path.stem}_cogvx{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered so pickling by module name works (DataLoader workers)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        problem = from_import_error(exc, path)
        if problem:
            raise UsageError(problem) from exc
        raise
    get_args = getattr(module, "get_args", None)
    if not callable(get_args):
        raise UsageError(
            f"{path.name} has no get_args(): cogvx-ext needs the diffusers script's get_args seam"
        )
    registration = _Registration(
        module=module, plugins=list(plugins or []), argv=list(argv if argv is not None else sys.argv[1:])
    )
    _registered[id(module.__dict__)] = registration
    _install_parse_args_wrapper()
    get_args()
    run = registration.run
    module.get_args = lambda: run.args  # parsed once; main(get_args()) gets the same namespace
    module.cogvx_run = run
    return module


def run_script(script_path: str, argv: list[str]) -> int:
    """The runner: ``cogvx-ext run SCRIPT [script args]``; returns an exit status."""
    try:
        module = load_trainer(script_path, argv=argv)
    except UsageError as exc:
        report_usage_error(exc)
        return 2
    module.main(module.get_args())
    return 0
