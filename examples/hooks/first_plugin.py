"""The smallest plugin: a module with one hook implementation (save it as `first_plugin.py` and
add `./first_plugin.py` to `--plugins`)."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_configure(args):
    print(f"training at {args.width}x{args.height}")
