"""A plugin that makes the rotary embedding follow each batch's shape says so."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_provides():
    return ["batch_rope"]
