"""A user plugin as a single .py file: one flag, and a mark left by cogvx_configure."""

from cogvx_ext import hookimpl


@hookimpl
def cogvx_add_arguments(parser):
    parser.add_argument("--flag_from_plugin", type=int, default=7, help="added by flag_plugin")


@hookimpl
def cogvx_configure(args):
    args.configured_by = "flag_plugin"
