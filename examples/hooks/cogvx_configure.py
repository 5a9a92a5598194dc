"""Checks the flag of the `cogvx_add_arguments` example: a bad value stops the run at start with
this one line and exit status 2."""

from cogvx_ext.api import UsageError, hookimpl


@hookimpl
def cogvx_configure(args):
    if args.log_shapes_every < 1:
        raise UsageError("--log_shapes_every must be at least 1")
