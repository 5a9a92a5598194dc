"""What the data hooks talk about: a clip on disk, a target for it, and the sample they make."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learnt of a file: display geometry, the frames shown and when, the decoder.

    ``width`` and ``height`` are the *display* size: the picture upright (after the rotation of
    its display matrix) in square pixels (the stored width scaled by the sample aspect ratio), as
    a player shows it. Crops and buckets are in these pixels. ``stored_width``/``stored_height``
    are the coded picture's, ``rotation`` the clockwise degrees a player turns it (0, 90, 180,
    270), ``sample_aspect`` the pixel aspect ratio as ``"N:D"``.

    ``num_frames`` counts the frames shown (an edit list can hide decoded ones); ``frame_times``
    are their presentation times in seconds, in order (empty: ``i / fps``). ``decoder`` names the
    decoder that reads the file: ``decord``, or ``pyav`` where decord fails or disagrees.

    Plain JSON-able fields only (a probe cache serialises them).
    """

    width: int
    height: int
    num_frames: int
    fps: float
    stored_width: int = 0  # 0: the same as width (no rotation, square pixels)
    stored_height: int = 0
    rotation: int = 0
    sample_aspect: str = "1:1"
    frame_times: tuple[float, ...] = ()
    decoder: str = "decord"

    def __post_init__(self) -> None:
        if not self.stored_width:
            object.__setattr__(self, "stored_width", self.width)
        if not self.stored_height:
            object.__setattr__(self, "stored_height", self.height)
        object.__setattr__(self, "frame_times", tuple(float(t) for t in self.frame_times))

    @property
    def display_size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def stored_size(self) -> str:
        return f"{self.stored_width}x{self.stored_height}"

    def times(self) -> list[float]:
        """Presentation time of every shown frame, seconds from the first."""
        if self.frame_times:
            first = self.frame_times[0]
            return [t - first for t in self.frame_times]
        rate = self.fps if self.fps > 0 else 1.0
        return [i / rate for i in range(self.num_frames)]


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


@dataclass(frozen=True)
class ListingEntry:
    index: int
    path: str
    prompt: str


@dataclass(frozen=True)
class Skipped:
    """A clip left out of training, with the reason; always reported. ``prompt``: its caption,
    where the listing gave one (the plan shows it, so the pairing can be checked)."""

    path: str
    reason: str
    prompt: str | None = None
