"""A cache plugin answers for `cogvx-ext cache fill`'s report (this one keeps nothing)."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_cache_summary():
    return {"root": "/tmp/my-cache", "hits": 0, "misses": 0, "recomputed": 0, "store_errors": 0}
