"""The two exceptions plugins raise on purpose."""


class UsageError(Exception):
    """A user's mistake (bad flag, unknown plugin, missing seam).

    The run stops with ``cogvx-ext: <message>`` on one line and exit status 2, no traceback.
    """


class SkipClip(Exception):
    """Raised by ``cogvx_clip_targets`` to leave one clip out; the message is the reason.

    Skipped clips are listed by path and reason in the training log and in ``cogvx-ext plan``.
    """
