"""What the data hooks talk about: a clip on disk, a target for it, and the sample they make."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoInfo:
    """Metadata read from a file's header (no frame decoded)."""

    width: int
    height: int
    num_frames: int
    fps: float


@dataclass(frozen=True)
class Clip:
    """One line of the dataset: the file, its caption, and its metadata."""

    index: int
    path: str
    prompt: str
    info: VideoInfo


@dataclass(frozen=True)
class Target:
    """How one clip becomes one training sample.

    ``crop`` is the region of the source picture kept, ``(top, left, height, width)`` in source
    pixels; it is resized to ``height x width``. ``frame_indices`` index the source's frames.
    ``tags`` name what made this target (a stage, a scale) for samplers that choose among them.
    """

    height: int
    width: int
    frame_indices: tuple[int, ...]
    crop: tuple[int, int, int, int]
    tags: tuple[tuple[str, str], ...] = field(default=())

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)

    def tag(self, key: str, default: str | None = None) -> str | None:
        return dict(self.tags).get(key, default)


@dataclass(frozen=True)
class Sample:
    """A clip and one of its targets: one item of the training dataset."""

    clip: Clip
    target: Target

    @property
    def index(self) -> int:
        return self.clip.index


STAGE_TAG = "stage"  # Target tag naming the stage (its index, as text) a target belongs to
SCALE_TAG = "scale"  # Target tag naming the fraction of its bucket's area a target is scaled to


@dataclass(frozen=True)
class Stage:
    """One stage of a progressive schedule: from optimizer step ``start_step`` on, train at this size.

    ``height`` and ``width`` name an exact size (the stage's shape without buckets, and one of
    its buckets with them); an area-only stage leaves them ``None`` and buckets (or the run's
    ``--height/--width`` aspect) are sized to ``area``. The optional fields replace the run's
    setting for this stage: ``frames`` the longest frame count (``--max_num_frames``),
    ``batch_size`` (``--train_batch_size``), ``token_budget`` (tokens per batch), and
    ``warmup_steps`` re-warms the learning rate linearly over the stage's first steps.
    """

    start_step: int
    area: int
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    batch_size: int | None = None
    token_budget: int | None = None
    warmup_steps: int = 0

    @property
    def label(self) -> str:
        """``512x288`` (WIDTHxHEIGHT, as everywhere) or ``147456px`` (an area)."""
        return f"{self.width}x{self.height}" if self.height else f"{self.area}px"

    def size_for(self, height: int, width: int, multiple: int = 16) -> tuple[int, int]:
        """The stage's exact size, or ``height x width`` scaled to the stage's area: ``(height, width)``
        in multiples of ``multiple``."""
        if self.height and self.width:
            return self.height, self.width
        scale = (self.area / (height * width)) ** 0.5
        return (
            max(multiple, int(height * scale / multiple + 0.5) * multiple),
            max(multiple, int(width * scale / multiple + 0.5) * multiple),
        )


def stage_at(stages: list[Stage] | tuple[Stage, ...], step: int) -> int:
    """Index of the stage that optimizer step ``step`` (0-based: the update taken from there) belongs to."""
    index = 0
    for i, stage in enumerate(stages):
        if stage.start_step <= step:
            index = i
    return index
