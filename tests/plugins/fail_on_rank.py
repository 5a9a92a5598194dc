"""Fails on purpose on one rank only: ``--fail_on_rank R --fail_in HOOK`` raises a plain exception
(a bug, not a bad clip) in ``cogvx_probe``, ``cogvx_load_pixels``, ``cogvx_encode_sample`` or
``cogvx_batch_sampler``.

``--fail_linger SECONDS`` keeps the failed process alive that long after its failure (its exit
waits for a thread), as the others see a failed rank under NCCL, which cannot tell that a peer
has gone: without their own warning they would wait in the next collective until it times out.
``--fail_mark FILE`` gets the failure's time (``time.time()``) as text.
"""

import os
import threading
import time

from cogvx_ext import hookimpl


class FailOnRank:
    def __init__(self):
        self.args = None

    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--fail_on_rank", type=int, default=None)
        parser.add_argument(
            "--fail_in", default="load_pixels", choices=["probe", "load_pixels", "encode", "batch_sampler"]
        )
        parser.add_argument("--fail_linger", type=float, default=0.0)
        parser.add_argument("--fail_mark", default=None)

    @hookimpl
    def cogvx_configure(self, args):
        self.args = args

    def fail(self, where, path):
        args = self.args
        if args is None or args.fail_on_rank != int(os.environ.get("RANK", "0")) or args.fail_in != where:
            return
        if args.fail_mark:
            with open(args.fail_mark, "w", encoding="utf-8") as f:
                f.write(repr(time.time()))
        if args.fail_linger:
            threading.Thread(target=time.sleep, args=(args.fail_linger,)).start()
        raise RuntimeError(f"fail_on_rank: injected failure in {where} of {os.path.basename(path)}")

    @hookimpl(tryfirst=True)
    def cogvx_probe(self, path):
        self.fail("probe", path)

    @hookimpl(tryfirst=True)
    def cogvx_load_pixels(self, sample):
        self.fail("load_pixels", sample.clip.path)

    @hookimpl(tryfirst=True)
    def cogvx_encode_sample(self, sample):
        self.fail("encode", sample.clip.path)

    @hookimpl(tryfirst=True)
    def cogvx_batch_sampler(self, samples):
        self.fail("batch_sampler", samples[0].clip.path)
