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


def plugins_read_the_data(chosen: set[str]) -> bool:
    """Whether a chosen plugin implements a data hook (``chosen``: the hooks chosen plugins
    implement). Then cogvx-ext reads the data in place of the script's ``VideoDataset``;
    otherwise the script reads it itself, as it would without cogvx-ext."""
    return any(hook in chosen for hook in DATA_HOOKS)
