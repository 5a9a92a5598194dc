"""The ``cogvx-ext`` command: plugins, run, demo, plan, cache, generate, --version."""

from __future__ import annotations

import argparse
import os
import sys

from cogvx_ext import __version__
from cogvx_ext.base.errors import UsageError, report_usage_error


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `python -m cogvx_ext SCRIPT ...` (what `accelerate launch -m cogvx_ext SCRIPT ...` runs) is
    # `cogvx-ext run SCRIPT ...`.
    if argv and argv[0].endswith(".py"):
        argv.insert(0, "run")
    parser = _parser()
    if argv and argv[0] == "plan":
        # The plan takes the training script's flags and the plugins' own: its parser is built
        # after the plugins are loaded.
        return _guarded(lambda: _plan(argv[1:]))
    if argv and argv[0] == "cache":
        from cogvx_ext.cli.cache import run_cache

        return _guarded(lambda: run_cache(argv[1:]))
    if argv and argv[0] == "generate":
        from cogvx_ext.cli.generate import run_generate

        return _guarded(lambda: run_generate(argv[1:]))
    if argv and argv[0] == "run":
        # Everything after SCRIPT belongs to the script, its --help included.
        if len(argv) < 2 or argv[1] in ("-h", "--help"):
            sys.stdout.write(RUN_HELP)
            return 0 if len(argv) >= 2 else 2
        from cogvx_ext.script.activation import run_script

        return run_script(argv[1], argv[2:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return _guarded(lambda: args.handler(args))


RUN_HELP = """\
usage: cogvx-ext run SCRIPT [script arguments] --plugins LIST
       python -m cogvx_ext SCRIPT ...      accelerate launch [...] -m cogvx_ext SCRIPT ...

Runs a training script (diffusers' train_cogvideox_lora.py or train_cogvideox_image_to_video_lora.py,
unmodified) with cogvx-ext plugins, without the start-up hook: for Pythons started with -S or
COGVX_EXT_DISABLE=1, and for launchers that cannot pass --plugins to the script itself. After a
pip install the script also takes --plugins directly: python train_cogvideox_lora.py ... --plugins LIST.

Everything after SCRIPT is the script's own command line plus --plugins (a comma list: installed
names such as aspect_bucket,rope_rescale, no:NAME, a dotted module, a .py file). The script's
--help lists its flags and those of the plugins named: cogvx-ext run SCRIPT --plugins LIST --help.
`cogvx-ext plugins` lists the installed plugins.
"""


def _guarded(action) -> int:
    try:
        return action()
    except UsageError as exc:
        report_usage_error(exc)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cogvx-ext",
        description="Plugins for the diffusers CogVideoX LoRA training scripts.",
    )
    parser.add_argument("--version", action="version", version=f"cogvx-ext {__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = commands.add_parser(
        "plugins",
        help="list installed plugins, their versions and hooks; --check a plugin file, module or package",
        description="Lists the installed plugins. With --check (or plugins named after the command), "
        "loads each as training would and reports its hooks, flags and defects; exit status 2 when "
        "one has a defect.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--check",
        metavar="PLUGIN",
        action="append",
        default=[],
        help="a plugin as --plugins names it (installed name, dotted module, ./file.py, with :Name); "
        "a comma list or repeated",
    )
    p.add_argument("named", nargs="*", metavar="PLUGIN", help="the same as --check PLUGIN")
    p.set_defaults(command="plugins", handler=_plugins)

    p = commands.add_parser(
        "new-plugin",
        help="write a plugin package to start from: pip install it, pytest it, --plugins NAME",
        description="Writes a plugin package: pyproject.toml with the entry point (group cogvx_ext), "
        "the plugin with one flag and one hook, a README and a test that trains a tiny model with it.",
    )
    p.add_argument(
        "name", metavar="NAME", help="the plugin's name, as --plugins will take it (e.g. shape_logger)"
    )
    p.add_argument("--dir", help="where to write the package (default: ./cogvx-ext-NAME)")
    p.set_defaults(command="new-plugin", handler=_new_plugin)

    commands.add_parser(
        "run",
        help="run a training script with plugins: cogvx-ext run SCRIPT [script args] --plugins ...",
        add_help=False,
    )

    p = commands.add_parser(
        "demo", help="train a tiny random CogVideoX on synthetic mixed-aspect clips, on CPU"
    )
    p.add_argument(
        "--trainer",
        default=None,
        help="path to diffusers' examples/cogvideo/train_cogvideox_lora.py, or its image-to-video script "
        "(default: $COGVX_EXT_TRAINER, with --i2v $COGVX_EXT_I2V_TRAINER)",
    )
    p.add_argument(
        "--i2v",
        action="store_true",
        help="image to video: a tiny CogVideoX-5b-I2V and the I2V script (also chosen by an I2V --trainer)",
    )
    p.add_argument(
        "--output_dir",
        default="cogvx-demo",
        help="where the model, clips and LoRA go (default: ./cogvx-demo)",
    )
    p.add_argument(
        "--plugins",
        default=None,
        help="plugins to train with (default: aspect_bucket,rope_rescale; image to video: "
        "aspect_bucket,rope_rescale,posemb_adapt)",
    )
    p.add_argument("--steps", type=int, default=6, help="optimizer steps (default: 6)")
    p.set_defaults(command="demo", handler=_demo)

    commands.add_parser(
        "cache",
        help="fill the latent cache ahead of training, or prune it: cogvx-ext cache {fill,prune} ...",
        add_help=False,
    )
    commands.add_parser(
        "generate",
        help="a video from a base model and a trained LoRA, as training saw it "
        "(cogvx-ext generate --help lists its flags)",
        add_help=False,
    )
    commands.add_parser(
        "plan",
        help="the bucket plan of a dataset before a long run, from clip headers only "
        "(cogvx-ext plan --help lists its flags: the script's data flags and the plugins' own)",
        add_help=False,
    )
    return parser


def _plugins(args) -> int:
    items = [
        item.strip() for value in [*args.check, *args.named] for item in value.split(",") if item.strip()
    ]
    if items:
        return _check_plugins(items, as_json=args.json)
    from cogvx_ext.plugin.manager import describe_installed

    rows = describe_installed()
    broken = [row for row in rows if "error" in row]
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no cogvx-ext plugins installed")
    for row in [] if args.json else rows:
        if "error" in row:
            continue
        print(f"{row['name']}  {row['version']}  {row['value']}")
        print(f"    {row['purpose'] or '(no docstring)'}")
        print(f"    flags: {', '.join(row['flags']) or '-'}")
        print(f"    hooks: {', '.join(row['hooks'])}")
    for row in broken:
        sys.stderr.write(f"cogvx-ext: {row['error']}\n")
    return 1 if broken else 0


def _check_plugins(items: list[str], as_json: bool) -> int:
    from cogvx_ext.plugin.manager import check_plugin

    reports = [check_plugin(item) for item in items]
    if as_json:
        import json

        print(json.dumps(reports, indent=2))
    for report in [] if as_json else reports:
        state = f"{len(report['defects'])} defect(s)" if report["defects"] else "ok"
        print(f"{report['name']}  ({report['item']}): {state}")
        if report.get("purpose"):
            print(f"    {report['purpose']}")
        print(f"    hooks: {', '.join(report['hooks']) or '-'}")
        print(f"    flags: {', '.join(report['flags']) or '-'}")
    for report in reports:
        for defect in report["defects"]:
            line = (
                defect
                if defect.startswith(("plugin ", "unknown plugin "))
                else f"plugin '{report['name']}': {defect}"
            )
            sys.stderr.write(f"cogvx-ext: {line}\n")
    return 2 if any(report["defects"] for report in reports) else 0


def _new_plugin(args) -> int:
    from cogvx_ext.cli.new_plugin import write_plugin_package

    folder = str(write_plugin_package(args.name, args.dir))
    if not folder.startswith(("/", ".")):
        folder = f"./{folder}"  # pip takes a bare name for a package on PyPI
    print(f"wrote {folder}: pip install {folder}; pytest {folder}; then train with --plugins {args.name}")
    return 0


def _demo(args) -> int:
    from cogvx_ext.cli.demo import run_demo

    trainer = args.trainer or os.environ.get("COGVX_EXT_I2V_TRAINER" if args.i2v else "COGVX_EXT_TRAINER")
    return run_demo(
        trainer=trainer, output_dir=args.output_dir, plugins=args.plugins, steps=args.steps, i2v=args.i2v
    )


def _plan(argv: list[str]) -> int:
    from cogvx_ext.cli.plan.command import run_plan

    return run_plan(argv)


if __name__ == "__main__":
    sys.exit(main())
