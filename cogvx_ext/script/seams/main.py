"""The script's ``main``: exceptions reach ``cogvx_exception``; a usage error found once main runs is one line."""

from __future__ import annotations

import functools
import sys

from cogvx_ext.base.errors import UsageError, report_usage_error


def _wrap_main(run, real_main):
    @functools.wraps(real_main)
    def main(args):
        try:
            return real_main(args)
        except BaseException as exc:
            _tell_the_other_ranks(run, exc)
            if not isinstance(exc, SystemExit):
                exc._cogvx_ext_reported = True
                run.hook.cogvx_exception(exc=exc, args=args, run=run.context)
            if isinstance(exc, UsageError):
                # Found once main runs (a broken dataset, a requirement known only from the loaded
                # model): still one line and status 2, not a traceback.
                report_usage_error(exc)
                raise SystemExit(2) from None
            raise

    return main


def _report_uncaught(run) -> None:
    """For scripts that call ``main(get_args())``: Python fetched ``main`` before ``get_args()``
    installed the wrapper above, so an escaping exception is reported on its way out instead."""
    previous = sys.excepthook

    def excepthook(exc_type, exc, traceback):
        _tell_the_other_ranks(run, exc)
        if not getattr(exc, "_cogvx_ext_reported", False):
            exc._cogvx_ext_reported = True
            run.hook.cogvx_exception(exc=exc, args=run.args, run=run.context)
        if isinstance(exc, UsageError):
            report_usage_error(exc)
            return
        previous(exc_type, exc, traceback)

    sys.excepthook = excepthook


def _tell_the_other_ranks(run, exc: BaseException) -> None:
    """Before anything else: the other ranks may be waiting for this one (cogvx_ext.data.ranks)."""
    from cogvx_ext.data.ranks import RankSync

    (run.rank_sync or RankSync()).announce(exc)
