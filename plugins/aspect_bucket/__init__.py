"""aspect_bucket: train every clip at its own aspect ratio, in batches that never mix shapes.

The entry point ``aspect_bucket`` names ``AspectBucket``; see ``plugin.py`` for the flags and
hooks, ``buckets.py``, ``frames.py`` and ``sampler.py`` for the rules (``cogvx-ext plan`` reports on them through the hooks).
"""

from .buckets import (
    Assignment,
    assign,
    crop_fraction,
    generate_bucket_ladder,
    generate_buckets,
    parse_buckets,
)
from .frames import frame_ladder, select_frames
from .plugin import AspectBucket
from .sampler import BucketBatchSampler, batch_sizes_for_budget

__all__ = [
    "AspectBucket",
    "Assignment",
    "BucketBatchSampler",
    "assign",
    "batch_sizes_for_budget",
    "crop_fraction",
    "frame_ladder",
    "generate_bucket_ladder",
    "generate_buckets",
    "parse_buckets",
    "select_frames",
]
