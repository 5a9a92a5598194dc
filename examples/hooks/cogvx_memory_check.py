"""Stops a run whose training step would not fit in 24 GiB, before any model loads."""

from cogvx_ext.api import UsageError, estimate, hookimpl

LIMIT = 24 * 2**30


@hookimpl
def cogvx_memory_check(setup, args, model):
    if setup is None:  # the model's configs are not on this machine: nothing to estimate from
        return
    peak = estimate(setup, model.latent_shape(args.max_num_frames, args.height, args.width)).peak
    print(f"estimated peak at {args.width}x{args.height}: {peak / 2**30:.2f} GiB")
    if peak > LIMIT:
        raise UsageError(
            f"{args.width}x{args.height} needs about {peak / 2**30:.1f} GiB, more than 24 GiB: "
            "lower --height/--width or --max_num_frames"
        )
