"""Quick validation on small machines: 9 frames, 10 steps. `trylast`, so it sees the sizes other
plugins chose."""

from cogvx_ext.api import hookimpl


@hookimpl(trylast=True)
def cogvx_validation_args(variants):
    for variant in variants:
        variant.update(num_frames=9, num_inference_steps=10)
