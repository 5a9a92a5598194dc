"""What the scripts' own data path does, for a run in which no chosen plugin reads the data.

Without a data plugin (``--plugins rope_rescale`` alone) cogvx-ext leaves the script's
``VideoDataset`` in place, as it does with no plugin at all: a plugin that changes no data must
not change how the data is read. The script then decodes every clip with decord as stored and
brings it to one size. ``cogvx-ext plan`` says so rather than promise skips and upright frames
that training will not give.
"""

from __future__ import annotations

import argparse

from cogvx_ext.model.facts import ModelInfo


def script_reading(args: argparse.Namespace, model: ModelInfo, plugins: list[str]) -> str:
    """One line: the script reads the data, and what that means for this run."""
    size = f"{args.width}x{args.height}"
    if model.is_i2v:  # the I2V script has decord resize every frame to the size: no crop
        shape = f"every clip is stretched to {size} (its aspect is not kept)"
    elif getattr(args, "video_reshape_mode", "center") in ("random", "none"):
        shape = f"every clip is resized to cover {size} and cropped at a random place"
    else:
        shape = f"every clip is resized to cover {size} and centre-cropped"
    chosen = f" ({', '.join(plugins)})" if plugins else ""
    return (
        f"no data plugin among the chosen{chosen}: the training script reads the clips itself: it skips "
        "nothing (a clip it cannot read stops it), ignores rotation and sample aspect (frames as stored), "
        f"and {shape}; add aspect_bucket to --plugins for per-clip sizes, skips and upright frames"
    )
