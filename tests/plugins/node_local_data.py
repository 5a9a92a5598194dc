"""Gives each rank its own copy of the data, as node-local storage does: ``--node_local_data``
reads ``<instance_data_root>_rank<RANK>``."""

import os

from cogvx_ext import hookimpl


class NodeLocalData:
    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--node_local_data", action="store_true")

    @hookimpl
    def cogvx_configure(self, args):
        if args.node_local_data:
            args.instance_data_root = f"{args.instance_data_root}_rank{os.environ.get('RANK', '0')}"
