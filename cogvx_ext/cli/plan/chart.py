"""``cogvx-ext plan --chart plan.png``: the plan as a picture.

Top: clips and video tokens per bucket, portrait buckets on the left, landscape on the right
(ordered by aspect ratio); with ``--memory``, each bucket's estimated peak memory against the
budget. Bottom left: skipped clips by reason. Bottom right: the stage schedule
when there is one (each stage's steps and tokens per step), else how much of each clip's picture
the crop cuts away. matplotlib is an optional extra: ``pip install "cogvx-ext[chart]"``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from cogvx_ext.base.errors import UsageError
from cogvx_ext.cli.plan.report import PlanReport

INSTALL_HINT = "pip install 'cogvx-ext[chart]' (matplotlib)"
PORTRAIT, SQUARE, LANDSCAPE = "#4c72b0", "#8c8c8c", "#dd8452"


def check_chart_available() -> None:
    """Before any work: the flag names what it needs."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--chart needs matplotlib: {INSTALL_HINT}") from None


def _reason_kind(reason: str) -> str:
    """The reason without the clip's own numbers, so that clips group by it:
    ``"stage 0 (160x96): too short: 3 frames"`` -> ``"too short"``,
    ``"aspect 8.00:1 (256x32) is too far from every bucket: ..."`` -> ``"aspect N:N is too far from every bucket"``."""
    reason = re.sub(r"^stage \d+ \([^)]*\): ", "", reason)
    head = re.sub(r" \([^)]*\)", "", reason.split(": ", 1)[0])
    head = re.sub(r"\d+(\.\d+)?", "N", head).strip()
    return head if len(head) <= 48 else head[:45] + "..."


def write_chart(report: PlanReport, path: str | os.PathLike) -> Path:
    """Draw the plan into ``path`` (PNG, or any format matplotlib knows by the extension)."""
    check_chart_available()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    last_stage = max((b.stage or 0 for b in report.buckets), default=0)
    buckets = [b for b in report.buckets if (b.stage or 0) == last_stage]
    buckets.sort(key=lambda b: (b.width / b.height, b.frames))
    figure = plt.figure(figsize=(12, 7.5), layout="constrained")
    grid = figure.add_gridspec(2, 2, height_ratios=[3, 2])
    top = figure.add_subplot(grid[0, :])
    used = len({c.path for c in report.ok})
    top.set_title(
        f"cogvx-ext plan ({', '.join(report.plugins) or 'stock sizes'}): {used} clips used, "
        f"{len(report.skipped)} skipped, {len({b.latent for b in report.buckets})} shapes"
        + (f" (final stage {last_stage})" if last_stage else "")
    )
    if buckets:
        with_memory = all(b.memory_bytes is not None for b in buckets)
        labels = [
            f"{b.width}x{b.height}\n{b.frames}f" + (f"\n{b.tokens} tok" if with_memory else "")
            for b in buckets
        ]
        colours = [
            PORTRAIT if b.height > b.width else LANDSCAPE if b.width > b.height else SQUARE for b in buckets
        ]
        positions = list(range(len(buckets)))
        top.bar(positions, [b.clips for b in buckets], color=colours)
        top.set_xticks(positions, labels, fontsize=8)
        top.set_ylabel("clips")
        top.set_ylim(0, max(b.clips for b in buckets) * 1.3)  # room for the legend
        top.yaxis.get_major_locator().set_params(integer=True)
        top.set_xlabel("bucket (WIDTHxHEIGHT, frames), by aspect ratio: portrait | square | landscape")
        right_axis = top.twinx()
        if with_memory:
            # plan --memory: each bucket's estimated peak at its batch size, against the budget.
            gib = [b.memory_bytes / 2**30 for b in buckets]
            right_axis.plot(positions, gib, "kD", markersize=6, label="estimated peak memory (GiB)")
            budget = (report.memory or {}).get("budget_bytes")
            if budget:
                right_axis.axhline(budget / 2**30, color="#c44e52", linestyle="--", label="memory budget")
            right_axis.set_ylabel("GiB per step (batch as planned)")
            right_axis.set_ylim(0, max([*gib, (budget or 0) / 2**30]) * 1.3)
        else:
            right_axis.plot(
                positions, [b.tokens for b in buckets], "k.", markersize=9, label="video tokens per sample"
            )
            right_axis.set_ylabel("video tokens per sample")
            right_axis.set_ylim(0, max(b.tokens for b in buckets) * 1.3)
        handles = [matplotlib.patches.Patch(color=c, label=n) for c, n in
                   ((PORTRAIT, "portrait"), (SQUARE, "square"), (LANDSCAPE, "landscape"))]  # fmt: skip
        top.legend(
            handles=[*handles, *right_axis.get_legend_handles_labels()[0]],
            loc="upper center",
            ncols=5,
            fontsize=8,
        )
    else:
        top.text(
            0.5, 0.5, "no bucket: no clip can be used", ha="center", va="center", transform=top.transAxes
        )

    skipped = figure.add_subplot(grid[1, 0])
    reasons = Counter(_reason_kind(c.reason or "") for c in report.skipped)
    skipped.set_title(f"skipped clips by reason ({len(report.skipped)})")
    if reasons:
        names, counts = zip(*reasons.most_common(8))
        skipped.barh(range(len(names)), counts, color="#c44e52")
        skipped.set_yticks(range(len(names)), names, fontsize=8)
        skipped.invert_yaxis()
        skipped.set_xlabel("clips")
        skipped.xaxis.get_major_locator().set_params(integer=True)
    else:
        skipped.text(0.5, 0.5, "none", ha="center", va="center", transform=skipped.transAxes)
        skipped.set_axis_off()

    right = figure.add_subplot(grid[1, 1])
    if report.stages:
        right.set_title("stage schedule")
        for stage in report.stages:
            right.bar(stage.start_step, stage.tokens_per_step, width=max(stage.steps, 1), align="edge",
                      color=LANDSCAPE if stage.index == len(report.stages) - 1 else "#55a868",
                      edgecolor="white")  # fmt: skip
            right.text(stage.start_step + stage.steps / 2, stage.tokens_per_step, stage.label,
                       ha="center", va="bottom", fontsize=8)  # fmt: skip
        right.set_xlabel("optimizer step")
        right.set_ylabel("tokens per step")
    else:
        crops = [c.crop * 100 for c in report.ok if c.crop is not None]
        right.set_title("picture cut away by the crop, per sample")
        if crops:
            right.hist(crops, bins=20, color=SQUARE)
            right.set_xlabel("% of the picture cropped")
            right.set_ylabel("samples")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
