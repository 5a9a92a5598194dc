"""Which script is loaded, and the families of hooks that the seams serve."""

from __future__ import annotations

T2V_PIPELINE = "CogVideoXPipeline"


I2V_PIPELINE = "CogVideoXImageToVideoPipeline"


DATA_HOOKS = (
    "cogvx_stages",
    "cogvx_probe",
    "cogvx_clip_targets",
    "cogvx_load_pixels",
    "cogvx_encode_sample",
    "cogvx_batch_sampler",
)


FORWARD_HOOKS = ("cogvx_transformer_forward", "cogvx_rotary_embedding", "cogvx_transformer_output")


def script_kind(namespace: dict) -> str:
    return "i2v" if I2V_PIPELINE in namespace else "t2v"
