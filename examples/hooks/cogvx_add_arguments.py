"""A flag of the plugin's own, in a group named after the plugin."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_add_arguments(parser):
    group = parser.add_argument_group("shape_logger")
    group.add_argument("--log_shapes_every", type=int, default=1, help="log batch shapes every N steps")
