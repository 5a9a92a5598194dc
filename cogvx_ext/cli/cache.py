"""``cogvx-ext cache fill|prune``: fill the latent cache ahead of training, and prune it.

``fill`` takes the training script's data flags, the plugins and their flags, and the VAE flags
that decide the cache key (``--pretrained_model_name_or_path``, ``--mixed_precision``,
``--enable_slicing``, ``--enable_tiling``), plans the samples with the same hooks and core
functions as training (cogvx_ext.script.offline, cogvx_ext.data.planning) and runs the same encoding hook
(the script's recipe, cogvx_ext.script.seams.ScriptEncoding) through the chosen cache plugin
(``latent_cache``). Under ``accelerate launch -m cogvx_ext cache fill ...`` or ``torchrun [--nnodes N
--node_rank R ...] -m cogvx_ext cache fill ...`` (several nodes, each with its own copy of the data,
one shared cache directory: tests/test_multinode.py) each process fills its share; nothing is
exchanged between processes but the final counts, each one only writes its entries. A process that
fails stops the others within a moment (cogvx_ext.data.ranks), never a wait for its counts.

``prune`` plans the dataset the same way and asks the cache plugin (``cogvx_cache_prune``) to
remove what the plan no longer reaches. The command knows no cache plugin: it talks to whichever
answers ``cogvx_cache_summary`` and ``cogvx_cache_prune``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from cogvx_ext.base.errors import SkipClip, UsageError, report_usage_error

DEFAULT_PLUGINS = "aspect_bucket,rope_rescale,latent_cache"
USAGE = """usage: cogvx-ext cache {fill,prune} [flags]

  fill   encode every sample of a dataset into the latent cache ahead of training
         (takes the training script's data and VAE flags, the plugins and their flags)
  prune  remove cache entries the dataset no longer reaches (and temporary files)

cogvx-ext cache fill --help / cogvx-ext cache prune --help list the flags.
"""


def run_cache(argv: list[str]) -> int:
    """``cogvx-ext cache ...``; returns an exit status (2 for a usage mistake)."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], list(argv[1:])
    commands = {"fill": fill, "prune": prune}
    if command not in commands:
        sys.stderr.write(f"cogvx-ext cache: unknown command '{command}' (fill or prune)\n")
        return 2
    try:
        return commands[command](rest)
    except UsageError as exc:
        report_usage_error(exc)
        return 2


def _cache_summary(run) -> dict[str, Any]:
    """What the chosen cache plugin reports; the commands need one (the core knows none by name)."""
    summary = run.hook.cogvx_cache_summary(run=run.context)
    if summary is None:
        raise UsageError("the cache commands need a cache plugin: add latent_cache to --plugins")
    return summary


# ---------------------------------------------------------------------------------------------
# fill


def fill(argv: list[str]) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    from cogvx_ext.data.decode_ahead import DecodeAhead
    from cogvx_ext.data.planning import plan_samples, report_skipped
    from cogvx_ext.data.ranks import RankSync
    from cogvx_ext.script.data_formats import read_script_data
    from cogvx_ext.script.offline import script_data_parser, start_offline_run
    from cogvx_ext.script.seams.dataset import ScriptEncoding

    parser = script_data_parser(
        "cogvx-ext cache fill",
        "Encode every sample of a dataset into the latent cache, as training would. Give the flags "
        f"of the training run (default plugins: {DEFAULT_PLUGINS}). Under `accelerate launch -m "
        "cogvx_ext cache fill ...` or `torchrun ... -m cogvx_ext cache fill ...` (one or more nodes) "
        "each process encodes its share.",
    )
    g = parser.add_argument_group("the VAE, as the training script sets it up (part of the cache key)")
    g.add_argument("--variant", default=None)
    g.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="the VAE's dtype in training (default: accelerate's setting, else no)",
    )
    g.add_argument("--enable_slicing", action="store_true")
    g.add_argument("--enable_tiling", action="store_true")
    g.add_argument(
        "--i2v",
        action="store_true",
        help="fill for train_cogvideox_image_to_video_lora.py (video and noised first-frame posteriors)",
    )
    run = start_offline_run(parser, argv, DEFAULT_PLUGINS, command="cache")
    args = run.args
    _cache_summary(run)
    if not args.pretrained_model_name_or_path:
        raise UsageError("cache fill needs --pretrained_model_name_or_path (its VAE encodes the clips)")
    run.kind = "i2v" if args.i2v else "t2v"
    run.pm.register(ScriptEncoding(run), name="cogvx_ext.script_encoding")

    # Without cpu=True accelerate starts no process group on a machine without CUDA, and every
    # process would fill everything (CPU training runs are launched with ACCELERATE_USE_CPU=1 too).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    rank, world, main = state.process_index, state.num_processes, state.is_local_main_process
    # A process that fails says so to the others, which stop within a moment instead of waiting
    # for its counts (cogvx_ext.data.ranks); the failure is shown once, by the process it hit.
    sync = RankSync()
    run.context.num_processes, run.context.process_index = world, rank
    try:
        vae = _load_vae(run, state.device)
        entries, skipped = read_script_data(args)
        samples, more_skipped = plan_samples(run.hook, entries, run.context, progress=main, sync=sync)
        if main:
            report_skipped(skipped + more_skipped)
        mine = samples[rank::world]
        failed = 0
        with torch.no_grad(), DecodeAhead(run.hook, mine, args, run.context):
            bar = tqdm(mine, desc="cogvx-ext cache fill", disable=not main, unit="sample")
            for sample in bar:
                sync.poll()
                try:
                    run.hook.cogvx_encode_sample(
                        sample=sample, vae=vae, kind=run.kind, args=args, run=run.context
                    )
                except SkipClip as exc:
                    failed += 1
                    tqdm.write(f"cogvx-ext: cannot encode {sample.clip.path}: {exc}")
                summary = run.hook.cogvx_cache_summary(run=run.context)
                bar.set_postfix(hits=summary["hits"], encoded=summary["misses"])
            bar.close()
        sync.meet("the fill's counts")
    except BaseException as exc:
        sync.announce(exc)
        raise

    summary = _cache_summary(run)
    counts = [summary["hits"], summary["misses"], summary["recomputed"], failed, summary["store_errors"]]
    if world > 1:
        counts = _sum_over_processes(counts, state.device)
    hits, misses, recomputed, failed, store_errors = counts
    if state.is_main_process:
        clips = len({s.clip.path for s in samples})
        line = (
            f"cogvx-ext cache fill: {len(samples)} sample(s) of {clips} clip(s): {hits} already cached, "
            f"{misses} encoded"
        )
        if recomputed:
            line += f" ({recomputed} unusable entr{'y' if recomputed == 1 else 'ies'} replaced)"
        if failed:
            line += f", {failed} failed"
        if store_errors:
            line += f", {store_errors} could not be stored"
        if skipped or more_skipped:
            line += f"; {len(skipped) + len(more_skipped)} clip(s) skipped (listed above)"
        print(f"{line}; cache {summary['root']}" + (f" ({world} processes)" if world > 1 else ""))
    if world > 1:
        # A process group left open at exit aborts the process (gloo), failing the launch. The
        # barrier first: no rank tears the group down while another still uses it (one CI run saw
        # a rank abort at exit with "terminate called without an active exception").
        state.wait_for_everyone()
        state.destroy_process_group()
        # Every entry is written and the summary printed. Under torchrun, a rank now and then
        # aborted in the interpreter's teardown ("terminate called without an active exception",
        # no Python frame left: 2 of 18 two-node fills on a loaded 2-core machine, none of 30
        # after this), failing a fill that had done its work. Leave without that teardown.
        _exit_now(1 if failed or store_errors else 0)
    return 1 if failed or store_errors else 0


def _exit_now(status: int) -> None:
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _load_vae(run, device) -> Any:
    """The VAE as the training scripts set it up: dtype from mixed precision, slicing, tiling."""
    import torch
    from diffusers import AutoencoderKLCogVideoX

    args = run.args
    vae = AutoencoderKLCogVideoX.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="vae", revision=args.revision, variant=args.variant
    )
    run.hook.cogvx_vae_loaded(vae=vae, args=args, run=run.context)
    if args.enable_slicing:
        vae.enable_slicing()
    if args.enable_tiling:
        vae.enable_tiling()
    # As accelerate decides when --mixed_precision is not given (accelerate launch exports it).
    mixed = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
    vae.requires_grad_(False)
    return vae.to(device, dtype=dtype)


def _sum_over_processes(counts: list[int], device) -> list[int]:
    import torch
    import torch.distributed as dist

    # nccl reduces CUDA tensors only; the state's device is the one its backend takes.
    total = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return [int(v) for v in total.tolist()]


# ---------------------------------------------------------------------------------------------
# prune


def prune(argv: list[str]) -> int:
    from cogvx_ext.data.planning import plan_samples
    from cogvx_ext.script.data_formats import read_script_data
    from cogvx_ext.script.offline import script_data_parser, start_offline_run

    parser = script_data_parser(
        "cogvx-ext cache prune",
        "Remove latent cache entries that the dataset, planned with these flags and plugins, no longer "
        f"reaches (default plugins: {DEFAULT_PLUGINS}).",
    )
    g = parser.add_argument_group("prune")
    g.add_argument("--dry_run", action="store_true", help="list what would be removed, remove nothing")
    g.add_argument(
        "--temp_age",
        type=float,
        default=3600.0,
        help="remove temporary files older than this many seconds (default 3600; a younger "
        "one may be a write in progress)",
    )
    run = start_offline_run(parser, argv, DEFAULT_PLUGINS, command="cache")
    args = run.args
    _cache_summary(run)
    entries, _ = read_script_data(args)
    samples, _ = plan_samples(run.hook, entries, run.context, progress=False)
    result = run.hook.cogvx_cache_prune(
        samples=samples, args=args, dry_run=args.dry_run, temp_age=args.temp_age, run=run.context
    )
    verb = "would remove" if args.dry_run else "removed"
    kept = result["kept"]
    print(
        f"cogvx-ext cache prune: {kept} entr{'y' if kept == 1 else 'ies'} kept, {verb} {result['removed']} "
        f"({_mib(result['freed_bytes'])}) and {result['temporary']} temporary file(s); cache {result['root']}"
    )
    return 0


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def main() -> int:
    return run_cache(sys.argv[1:])


if __name__ == "__main__":
    # `torchrun -m cogvx_ext.cli.cache fill ...` works before the `cache` command is wired into
    # the cogvx-ext command line, and beside it.
    sys.exit(main())
