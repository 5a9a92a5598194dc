"""``cogvx-ext plan``: the command line."""

from __future__ import annotations

import json
import sys

from cogvx_ext.cli.plan.report import (
    add_memory,
    build_report,
    describe_model,
    rounded_sizes,
    script_reads_the_data,
)
from cogvx_ext.cli.plan.text import format_report
from cogvx_ext.cli.plan.to_json import report_to_json


def run_plan(argv: list[str]) -> int:
    """``cogvx-ext plan [the script's data flags] [plugin flags] [--json PATH]``."""
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.plugin.manager import chosen_hooks
    from cogvx_ext.script.data_formats import read_script_data
    from cogvx_ext.script.offline import script_data_parser, start_offline_run
    from cogvx_ext.script.seams.kinds import plugins_read_the_data
    from cogvx_ext.script.stock_data import script_reading

    parser = script_data_parser("cogvx-ext plan", "The bucket plan of a dataset, from clip headers only.")
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="also write the plan as JSON (- for stdout)"
    )
    parser.add_argument(
        "--chart",
        metavar="PNG",
        default=None,
        help="also draw the plan: clips and tokens per bucket, skipped clips by reason, the stage schedule "
        "(needs matplotlib: pip install 'cogvx-ext[chart]')",
    )
    # The run's length, for a stage schedule's share of the compute (the script's flags and defaults).
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument(
        "--memory",
        action="store_true",
        help="estimate each bucket's peak accelerator memory per training step (cogvx_ext.model.memory: "
        "fake tensors on the CPU, no GPU and no weights)",
    )
    from cogvx_ext.model.memory.setup import add_setup_arguments

    add_setup_arguments(parser)
    run = start_offline_run(parser, argv, default_plugins="aspect_bucket,rope_rescale")
    args = run.args
    if args.chart:
        from cogvx_ext.cli.plan.chart import check_chart_available

        check_chart_available()
    entries, skipped = read_script_data(args)
    samples, more = plan_samples(run.hook, entries, run.context, progress=sys.stderr.isatty())
    from cogvx_ext.plugin.memory_check import check_planned

    check_planned(run.pm, run.context, samples)  # what training checks once its clips are planned
    report = build_report(samples, skipped + more, run.context, run.hook)
    if not plugins_read_the_data(chosen_hooks(run.pm)):  # training leaves the script's VideoDataset alone
        script_reads_the_data(report, script_reading(args, run.model, run.plugin_names))
    report.model = describe_model(run.model, run.model_source)
    report.rounded = rounded_sizes(args, run.model, report.buckets)
    if args.memory and report.buckets:
        from cogvx_ext.plugin.memory_check import setup_for_plugins

        add_memory(
            report,
            setup_for_plugins(run.pm, args, args.model),
            (args.width, args.height),
            tiling_on=bool(getattr(args, "enable_tiling", False)),
        )
    if args.json == "-":
        print(json.dumps(report_to_json(report), indent=2))
    else:
        print(format_report(report))
        if args.json:
            from cogvx_ext.base.io import write_json_atomic

            write_json_atomic(args.json, report_to_json(report))
            print(f"plan written to {args.json}")
    if args.chart:
        from cogvx_ext.cli.plan.chart import write_chart

        write_chart(report, args.chart)
        print(f"chart drawn in {args.chart}", file=sys.stderr if args.json == "-" else sys.stdout)
    if report.skipped:  # a plugin may stop here, as it stops training (aspect_bucket's --bucket_strict)
        run.hook.cogvx_clips_skipped(skipped=report.skipped, when="plan", args=args, run=run.context)
    # 1: training would not go through: nothing to train on, or a clip the script's own data path stops on
    return 0 if report.ok and not report.unusable else 1
