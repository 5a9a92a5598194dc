"""Trains at 512x288's area first, at 1024x576's from optimizer step 1200 on."""

from cogvx_ext.api import Stage, hookimpl


@hookimpl
def cogvx_stages(args):
    return [Stage(start_step=0, area=288 * 512), Stage(start_step=1200, area=576 * 1024)]
