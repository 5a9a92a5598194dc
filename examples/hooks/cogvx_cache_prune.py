"""Would keep an entry per clip still in use (this one keeps nothing, and removes nothing)."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_cache_prune(samples, dry_run):
    wanted = {s.clip.path for s in samples}
    print(f"{len(wanted)} clips still in use; dry run: {dry_run}")
    return {"root": "/tmp/my-cache", "kept": len(wanted), "removed": 0, "temporary": 0, "freed_bytes": 0}
