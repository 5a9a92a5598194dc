"""Keeps a list of the clips a run left out next to its LoRA (`skipped-plan.txt`,
`skipped-decode.txt`). To stop the run instead, raise `UsageError`."""

import os

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_clips_skipped(skipped, when, args):
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"skipped-{when}.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{clip.path}\t{clip.reason}\n" for clip in skipped)
