"""Decode ahead: the next sample is decoded in a background thread while the current one is
VAE-encoded, so an encoding pass (a training run's, with or without ``latent_cache``, and
``cogvx-ext cache fill``) takes about as long as the slower of decoding and encoding, not their sum.

One worker thread calls ``cogvx_load_pixels`` for the samples of the encoding loop, in the loop's
order, and holds at most ``depth`` (1) decoded samples that the loop has not taken: peak memory
does not grow with the number of clips (one clip's pixels more than one at a time). A sample is
decoded only once the loop has asked for the pixels of the one before it (or of itself). A sample
that a cache answers never asks, so a warm cache decodes nothing; the sample after a miss is decoded
on speculation, while the miss encodes, and dropped unread if a cache answers it.

The pixels, or the exception their decoding raised (``SkipClip`` for a broken file, or any other
error), are handed over when the loop asks for that sample, on the loop's thread: the loop sees what
it would have decoded itself, in the same order, and the latents are the same bit for bit (the
encode, which may draw random numbers, stays on the loop's thread and in order).

``COGVX_EXT_DECODE_AHEAD=0`` decodes on the loop's thread, one sample at a time: for a plugin whose
``cogvx_load_pixels`` cannot run in a thread of its own beside the encoding of the sample before
(it draws from torch's global random generator, or reads what another hook set for the current
sample), and to compare.
"""

from __future__ import annotations

import os
import threading
from contextvars import ContextVar
from typing import Any

import torch

ENV = "COGVX_EXT_DECODE_AHEAD"

_ACTIVE: ContextVar[DecodeAhead | None] = ContextVar("cogvx_ext_decode_ahead", default=None)
_NOT_AHEAD = object()


def enabled() -> bool:
    """Whether encoding loops decode ahead (``COGVX_EXT_DECODE_AHEAD``, on unless ``0``)."""
    return os.environ.get(ENV, "").strip() != "0"


def load_pixels(hook: Any, sample: Any, args: Any, run: Any) -> torch.Tensor:
    """``cogvx_load_pixels`` for ``sample``: decoded ahead when an encoding loop on this thread runs a
    ``DecodeAhead`` that has it, else decoded here."""
    ahead = _ACTIVE.get()
    if ahead is not None:
        pixels = ahead.take(sample)
        if pixels is not _NOT_AHEAD:
            return pixels
    return hook.cogvx_load_pixels(sample=sample, args=args, run=run)


class DecodeAhead:
    """``with DecodeAhead(hook, samples, args, run): <encode each sample, in order>``.

    Inside the block, :func:`load_pixels` on this thread takes the samples' pixels from the worker.
    Leaving the block (also by an exception or ``KeyboardInterrupt``) stops the worker and waits for
    the decode it is in, if any; what it decoded and nobody took is dropped.
    """

    def __init__(self, hook: Any, samples: list[Any], args: Any, run: Any, depth: int = 1):
        if depth < 1:
            raise ValueError("DecodeAhead needs depth >= 1")
        self._hook, self._args, self._run = hook, args, run
        self._order = list(samples)
        self._depth = depth
        self._cond = threading.Condition()
        self._wanted = -1  # the position the loop asked for last; nothing is decoded before the first ask
        self._next = 0  # the worker's next position (it skips to the wanted one)
        self._busy: int | None = None  # the position being decoded
        self._ready: dict[int, tuple[bool, Any]] = {}  # position -> (decoded, pixels or the exception)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._token = None
        self.peak_held = 0  # the most decoded samples held at once, not yet taken by the loop

    def __enter__(self) -> DecodeAhead:
        if self._order and enabled():
            self._thread = threading.Thread(target=self._work, name="cogvx-ext decode ahead", daemon=True)
            self._thread.start()
            self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        self.close()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
        if self._thread is not None:
            # A decode cannot be interrupted: wait for the one in progress (daemon: a second Ctrl-C
            # here still ends the process).
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the loop's side ----------------------------------------------------------------------

    def take(self, sample: Any) -> Any:
        """``sample``'s pixels (or its decoding's exception, raised); ``_NOT_AHEAD`` for a sample
        this worker will not decode (not in the order, or asked for a second time)."""
        position = self._position(sample)
        if position is None:
            return _NOT_AHEAD
        with self._cond:
            if position < self._next and position != self._busy and position not in self._ready:
                return _NOT_AHEAD  # taken before: decoded again, on this thread
            self._wanted = position
            for stale in [p for p in self._ready if p < position]:
                del self._ready[stale]  # decoded on speculation, answered by a cache
            self._cond.notify_all()
            while position not in self._ready:
                if not self.running:
                    raise RuntimeError("cogvx-ext: the decode-ahead thread has stopped")
                self._cond.wait()
            decoded, value = self._ready.pop(position)
            self._cond.notify_all()
        if decoded:
            return value
        raise value

    def _position(self, sample: Any) -> int | None:
        for position in range(max(self._wanted, 0), len(self._order)):
            if self._order[position] is sample:
                return position
        return None

    # ---- the worker ---------------------------------------------------------------------------

    def _may_start(self) -> bool:
        start = max(self._next, self._wanted)
        return self._wanted >= 0 and start < len(self._order) and len(self._ready) < self._depth

    def _work(self) -> None:
        with torch.no_grad():  # as the loop runs (grad mode is per thread)
            while True:
                with self._cond:
                    while not self._stop and not self._may_start():
                        self._cond.wait()
                    if self._stop:
                        return
                    position = self._busy = self._next = max(self._next, self._wanted)
                pixels = None
                try:
                    sample = self._order[position]
                    pixels = self._hook.cogvx_load_pixels(sample=sample, args=self._args, run=self._run)
                    result = (True, pixels)
                except BaseException as exc:  # handed to the loop, raised there
                    result = (False, exc)
                with self._cond:
                    self._busy, self._next = None, position + 1
                    if not self._stop and position >= self._wanted:
                        self._ready[position] = result
                        self.peak_held = max(self.peak_held, len(self._ready))
                    self._cond.notify_all()
                result = pixels = None  # held by the loop now, or dropped: not kept alive here
