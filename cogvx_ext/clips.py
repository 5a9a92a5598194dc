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
