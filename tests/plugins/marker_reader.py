"""A test plugin that reads the footage fixtures' markers (tests/footage.py) in every decoded sample.

`--marker_reader_out FILE` gets one JSON line per decoded sample: the clip, its probed display
geometry and frame times, the target, and for each frame the markers' positions and the clock.
"""

from __future__ import annotations

import json
import os
import sys

from cogvx_ext import hookimpl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from footage import read_markers  # noqa: E402


class MarkerReader:
    def __init__(self):
        self.out = None

    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--marker_reader_out", default=None)

    @hookimpl
    def cogvx_configure(self, args):
        self.out = args.marker_reader_out

    @hookimpl(wrapper=True)
    def cogvx_load_pixels(self, sample):
        pixels = yield
        if self.out:
            info, target = sample.clip.info, sample.target
            gray = "gray" in os.path.basename(sample.clip.path)
            frames = [read_markers(frame.numpy(), gray) for frame in pixels]
            line = {
                "path": os.path.basename(sample.clip.path),
                "display": info.display_size,
                "times": [info.times()[i] for i in target.frame_indices],
                "size": f"{target.width}x{target.height}",
                "crop": list(target.crop),
                "indices": list(target.frame_indices),
                "red": [list(m.red) for m in frames],
                "green": [list(m.green) for m in frames],
                "clocks": [m.index for m in frames],
            }
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        return pixels
