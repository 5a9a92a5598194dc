"""The latent_cache plugin: its flags and hooks, the lookups of a run, and its counts."""

from __future__ import annotations

import argparse
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cogvx_ext.api import Sample, UsageError, folder_write_problem, hookimpl, write_json_atomic

from . import keys
from .keys import (
    canonical_json,
    clip_fields,
    digest,
    entry_key,
    expected_latent_shapes,
    file_identity,
    prompt_fields,
    text_encoder_identity,
    tokenizer_identity,
    vae_identity,
    weights_fingerprint,
)
from .probes import (
    probe_entry_path,
    probe_key,
    video_info_from_json,
    video_info_to_json,
)
from .prune import prune
from .store import (
    META_CLIP_KEY,
    META_FIELDS,
    META_FORMAT,
    META_KEY,
    META_SOURCE,
    META_TEXT_KEY,
    BadEntry,
    check_entry,
    entry_path,
    prompt_entry_path,
    read_entry,
    write_entry,
)
from .tiling import AutoTiling


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    recomputed: int = 0  # bad entries encoded again (also counted as misses)
    store_errors: int = 0
    prompt_hits: int = 0
    prompt_misses: int = 0
    probe_hits: int = 0
    tiled: int = 0  # samples encoded (or looked up) with VAE tiling turned on here


@dataclass
class _Lookup:
    """One cogvx_encode_sample call in flight: what the wrapper computed for the loader."""

    sample: Sample
    key: str
    path: Path
    kind: str
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype
    metadata: dict[str, str]
    served: bool = False


@dataclass
class _PromptLookup:
    prompts: list[str]
    keys: list[str]
    fields: list[dict[str, Any]]
    length: int
    width: int | None
    dtype: torch.dtype
    served: bool = False
    missing: list[int] = field(default_factory=list)


class _FingerprintMemo:
    """Weights fingerprints per model object and dtype: computed once per run, not per sample."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[weakref.ref, str, str]] = {}

    def get(self, module: torch.nn.Module) -> str:
        dtype = str(module.dtype)
        known = self._memo.get(id(module))
        if known is not None and known[0]() is module and known[1] == dtype:
            return known[2]
        value = weights_fingerprint(module)
        self._memo[id(module)] = (weakref.ref(module), dtype, value)
        return value


class LatentCache:
    """The plugin; one instance per run."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.readonly = False
        self.stats = CacheStats()
        self._fingerprints = _FingerprintMemo()
        self._file_ids: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._probes_served: set[str] = set()
        self._lookup: _Lookup | None = None
        self._prompt_lookup: _PromptLookup | None = None
        self._prompts: dict[str, torch.Tensor] = {}  # prompt entry key -> embedding [L, D], CPU
        self._tokenizers: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}
        self.tiling = AutoTiling()

    # ---- set-up --------------------------------------------------------------------------

    @hookimpl
    def cogvx_add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("latent_cache")
        group.add_argument(
            "--latent_cache_dir",
            default=None,
            help="Folder of the latent cache (required with latent_cache): VAE posteriors and prompt "
            "embeddings under content keys; a launch with nothing changed decodes and encodes nothing.",
        )
        group.add_argument(
            "--latent_cache_readonly",
            action="store_true",
            help="Read the cache, never write to it (a shared or read-only cache).",
        )

    @hookimpl
    def cogvx_configure(self, args: argparse.Namespace) -> None:
        if not getattr(args, "latent_cache_dir", None):
            raise UsageError("latent_cache needs --latent_cache_dir DIR (where the cached latents live)")
        self.root = Path(args.latent_cache_dir).expanduser().resolve()
        self.readonly = bool(getattr(args, "latent_cache_readonly", False))
        if self.readonly:
            if not self.root.is_dir():
                raise UsageError(f"--latent_cache_dir {self.root} does not exist (--latent_cache_readonly)")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--latent_cache_dir {self.root} cannot be created: {exc.strerror}") from None
        # A real file, not the permission bits: root passes those, and a read-only mount or an
        # immutable folder stop root too; found here, not at the first entry after the models load.
        problem = folder_write_problem(self.root)
        if problem:
            raise UsageError(
                f"--latent_cache_dir {self.root} {problem}; give a folder you can write to, or add "
                "--latent_cache_readonly to only read it"
            )

    # ---- latents ---------------------------------------------------------------------------
    #
    # pluggy runs a wrapper's code before `yield` ahead of every other implementation, and a
    # wrapper must yield. So the wrapper computes the key and, after `yield`, stores what was
    # encoded; the tryfirst implementation below answers from the cache, and its non-None
    # answer stops the firstresult call before anything decodes or encodes.

    def lookup(self, sample: Sample, vae: torch.nn.Module, kind: str, args: argparse.Namespace) -> _Lookup:
        """Where ``sample``'s entry lives and what it must hold, for this VAE, script kind and arguments."""
        if self.root is None:
            raise RuntimeError("latent_cache: cogvx_configure has not run (no --latent_cache_dir)")
        fields = clip_fields(sample, args, self._file_identity(sample.clip.path))
        clip_key = digest(fields)
        vae_id = vae_identity(vae, self._fingerprints.get(vae))
        key = entry_key(clip_key, kind, vae_id)
        metadata = {
            META_FORMAT: str(keys.FORMAT_VERSION),
            META_KEY: key,
            META_CLIP_KEY: clip_key,
            META_FIELDS: canonical_json({"clip": fields, "kind": kind, "vae": vae_id}),
            META_SOURCE: sample.clip.path,
        }
        return _Lookup(
            sample,
            key,
            entry_path(self.root, key),
            kind,
            expected_latent_shapes(sample, vae, kind),
            vae.dtype,
            metadata,
        )

    def _file_identity(self, path: str) -> dict[str, Any]:
        stat = os.stat(path)
        memo_key = (path, stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._file_ids:
            self._file_ids[memo_key] = file_identity(path)
        return self._file_ids[memo_key]

    # ---- probes ------------------------------------------------------------------------------
    #
    # A clip's header answer, stored as JSON under the clip's contents (size, first and last MiB):
    # a launch with nothing changed demuxes no clip, and the identity it reads serves the latent
    # keys too. A path, size and time would hand a replaced file the old file's entries.

    @hookimpl(tryfirst=True, specname="cogvx_probe")
    def load_cached_probe(self, path: str):
        """Answers from ``DIR/probes/``, JSON keyed by the clip's contents (its size and the hashes of its
        first and last MiB, as its latent keys): a warm launch demuxes no clip, and a file replaced with
        the same size and time is probed again."""
        if self.root is None:
            return None
        try:
            key = probe_key(self._file_identity(path))
            with open(probe_entry_path(self.root, key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None  # no entry (or no file: the probe below says so)
        info = video_info_from_json(entry.get("info")) if isinstance(entry, dict) else None
        if info is None or entry.get("key") != key:
            return None
        self._probes_served.add(path)
        self.stats.probe_hits += 1
        return info

    @hookimpl(wrapper=True)
    def cogvx_probe(self, path: str):
        """Stores what the probe below answered (``dataclasses.asdict`` of the ``VideoInfo``, so new fields
        are kept too)."""
        info = yield
        if path in self._probes_served:
            self._probes_served.discard(path)
            return info
        if info is None or self.root is None or self.readonly:
            return info
        try:
            key = probe_key(self._file_identity(path))
            entry = {"key": key, "path": path, "info": video_info_to_json(info)}
            write_json_atomic(probe_entry_path(self.root, key), entry)
        except (OSError, TypeError, ValueError):
            pass  # not kept: the next launch probes this clip again
        return info

    @hookimpl(wrapper=True)
    def cogvx_encode_sample(self, sample: Sample, vae: torch.nn.Module, kind: str, args: argparse.Namespace):
        """Stores what was encoded below, as safetensors keyed by the clip's identity, the target (tags
        included), the VAE and the dtype."""
        # Tiling first: it is part of the key.
        reason = self.tiling.needed(sample, vae, args)
        if reason is not None:
            vae.enable_tiling()
            self.stats.tiled += 1
            if not self.tiling.said:
                self.tiling.said = True
                self._report(reason)
        try:
            try:
                lookup = self.lookup(sample, vae, kind, args)
            except OSError:
                # The file went away after planning: no key, no caching; decoding reports the clip.
                return (yield)
            self._lookup = lookup
            try:
                result = yield
            finally:
                self._lookup = None
        finally:
            if reason is not None:
                vae.disable_tiling()
        if lookup.served:
            self.stats.hits += 1
            return result
        self.stats.misses += 1
        if result is not None and not self.readonly:
            self._store(lookup, result)
        return result

    @hookimpl(tryfirst=True, specname="cogvx_encode_sample")
    def load_cached_posteriors(self, sample: Sample):
        """On a hit, the posteriors from disk; ``None`` lets the plugins after this one encode."""
        from cogvx_ext.api import LatentPosterior  # loaded when an entry is read, not with the plugin

        lookup = self._lookup
        if lookup is None or lookup.sample is not sample:
            return None
        try:
            tensors, metadata = read_entry(lookup.path)
            check_entry(tensors, metadata, lookup.key, lookup.shapes, lookup.dtype)
        except FileNotFoundError:
            return None
        except BadEntry as exc:
            self.stats.recomputed += 1
            self._report(
                f"{_describe(sample)}: cached entry {lookup.path.name} is unusable ({exc}); encoding again"
            )
            return None
        lookup.served = True
        video = LatentPosterior(tensors["video"])
        return (video, LatentPosterior(tensors["image"])) if lookup.kind == "i2v" else video

    def _store(self, lookup: _Lookup, result: Any) -> None:
        parts = result if isinstance(result, tuple) else (result,)
        names = ("video", "image")[: len(parts)]
        tensors = {name: part.parameters for name, part in zip(names, parts)}
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        if shapes != lookup.shapes:
            # Stored it would be rejected at every launch; say so once instead.
            self._report(
                f"{_describe(lookup.sample)}: not cached, the encoder returned {shapes}, expected {lookup.shapes}"
            )
            return
        try:
            write_entry(lookup.path, tensors, lookup.metadata)
        except OSError as exc:
            # A full disk must not stop training: the sample is encoded, it is only not kept.
            self.stats.store_errors += 1
            if self.stats.store_errors == 1:
                self._report(f"cannot write to {self.root} ({exc.strerror or exc}); going on without storing")

    @hookimpl(wrapper=True)
    def cogvx_batch_sampler(self):
        """Reports the cache's use after the encoding pass."""
        # Fires once, right after the encoding pass (before the DataLoader is made): the summary
        # goes before `yield` so a failing sampler does not hide it.
        if self.stats.hits or self.stats.misses:
            self._report(self.summary())
        return (yield)

    def summary(self) -> str:
        s = self.stats
        text = f"{s.hits} sample(s) read from the cache, {s.misses} encoded"
        if s.tiled:
            text += f"; {s.tiled} with VAE tiling"
        if s.probe_hits:
            text += f"; {s.probe_hits} clip header(s) from the cache"
        if s.recomputed:
            text += f" ({s.recomputed} unusable entr{'y' if s.recomputed == 1 else 'ies'} among them)"
        if s.store_errors:
            text += f", {s.store_errors} could not be stored"
        elif self.readonly and s.misses:
            text += " and not stored (--latent_cache_readonly)"
        return f"{text}; cache {self.root}"

    def _report(self, message: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"cogvx-ext: latent_cache{_rank_prefix()}: {message}")

    # ---- prompt embeddings -------------------------------------------------------------------
    #
    # The same split as for latents: a tryfirst answer from memory or disk, a wrapper that stores.

    def prompt_lookup(
        self,
        prompts: list[str],
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        max_sequence_length: int,
        dtype: torch.dtype,
    ) -> _PromptLookup:
        encoder_id = text_encoder_identity(
            text_encoder, tokenizer, self._fingerprints.get(text_encoder), self._tokenizer_identity(tokenizer)
        )
        fields = [prompt_fields(text, encoder_id, max_sequence_length, dtype) for text in prompts]
        config = text_encoder.config
        width = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
        return _PromptLookup(
            prompts, [digest(f) for f in fields], fields, int(max_sequence_length), width, dtype
        )

    def _tokenizer_identity(self, tokenizer: Any) -> dict[str, Any]:
        # Hashing a 32k-word vocabulary at every step would cost more than the step's lookups.
        known = self._tokenizers.get(id(tokenizer))
        if known is not None and known[0]() is tokenizer:
            return known[1]
        identity = tokenizer_identity(tokenizer)
        self._tokenizers[id(tokenizer)] = (weakref.ref(tokenizer), identity)
        return identity

    @hookimpl(wrapper=True)
    def cogvx_prompt_embeddings(
        self,
        prompts: list[str],
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        max_sequence_length: int,
        dtype: torch.dtype,
    ):
        """Stores the prompts encoded below, one safetensors entry per prompt, kept in memory for the run."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if text_encoder is None or tokenizer is None:
            return (yield)
        lookup = self.prompt_lookup(prompts, tokenizer, text_encoder, max_sequence_length, dtype)
        self._prompt_lookup = lookup
        try:
            result = yield
        finally:
            self._prompt_lookup = None
        if lookup.served or result is None:
            return result
        self.stats.prompt_misses += len(lookup.missing)
        for i in lookup.missing:
            embedding = result[i].detach().cpu().contiguous()
            self._prompts[lookup.keys[i]] = embedding
            if not self.readonly:
                self._store_prompt(lookup, i, embedding)
        return result

    @hookimpl(tryfirst=True, specname="cogvx_prompt_embeddings")
    def load_cached_prompt_embeddings(self, device: torch.device, dtype: torch.dtype):
        """All prompts from memory or disk, or ``None`` when one is missing (then all are encoded)."""
        lookup = self._prompt_lookup
        if lookup is None:
            return None
        found, lookup.missing = [], []
        for i, key in enumerate(lookup.keys):
            embedding = self._prompts.get(key)
            if embedding is None:
                embedding = self._load_prompt(lookup, i)
            if embedding is None:
                lookup.missing.append(i)
            found.append(embedding)
        if lookup.missing:
            return None
        lookup.served = True
        self.stats.prompt_hits += len(found)
        return torch.stack(found).to(device=device, dtype=dtype)

    def _load_prompt(self, lookup: _PromptLookup, i: int) -> torch.Tensor | None:
        key = lookup.keys[i]
        path = prompt_entry_path(self.root, key)
        try:
            tensors, metadata = read_entry(path)
            shape = None if lookup.width is None else (lookup.length, lookup.width)
            check_entry(tensors, metadata, key, {"embedding": shape}, lookup.dtype)
            embedding = tensors["embedding"]
            if embedding.ndim != 2 or embedding.shape[0] != lookup.length:
                raise BadEntry(f"embedding has shape {list(embedding.shape)}, expected [{lookup.length}, D]")
        except FileNotFoundError:
            return None
        except BadEntry as exc:
            self._report(
                f"prompt {lookup.prompts[i][:60]!r}: cached entry {path.name} is unusable ({exc}); encoding again"
            )
            return None
        self._prompts[key] = embedding
        return embedding

    def _store_prompt(self, lookup: _PromptLookup, i: int, embedding: torch.Tensor) -> None:
        metadata = {
            META_FORMAT: str(keys.FORMAT_VERSION),
            META_KEY: lookup.keys[i],
            META_TEXT_KEY: lookup.fields[i]["text"],
            META_FIELDS: canonical_json(lookup.fields[i]),
            META_SOURCE: lookup.prompts[i],
        }
        try:
            write_entry(prompt_entry_path(self.root, lookup.keys[i]), {"embedding": embedding}, metadata)
        except OSError as exc:
            self.stats.store_errors += 1
            if self.stats.store_errors == 1:
                self._report(f"cannot write to {self.root} ({exc.strerror or exc}); going on without storing")

    # ---- the cache command (cogvx-ext cache fill|prune) -----------------------------------------

    @hookimpl
    def cogvx_cache_summary(self) -> dict[str, Any]:
        """Hits, misses, entries encoded again and entries not written, with the cache's folder."""
        s = self.stats
        return {
            "root": str(self.root),
            "hits": s.hits,
            "misses": s.misses,
            "recomputed": s.recomputed,
            "store_errors": s.store_errors,
        }

    @hookimpl
    def cogvx_cache_prune(
        self, samples: list[Sample], args: argparse.Namespace, dry_run: bool, temp_age: float
    ) -> dict[str, Any]:
        """Removes the entries no planned sample reaches, reading entry headers only; entries for another
        VAE or dtype stay."""
        return prune(self.root, samples, args, dry_run, temp_age)


def _describe(sample: Sample) -> str:
    target = sample.target
    return f"{sample.clip.path} [{target.width}x{target.height}, {target.num_frames} frames]"


def _rank_prefix() -> str:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return f" (rank {dist.get_rank()})"
    return ""
