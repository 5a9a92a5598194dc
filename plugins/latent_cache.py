"""latent_cache: launch in seconds. VAE posteriors and prompt embeddings kept on disk under content keys.

* One entry per sample (clip, bucket, frame selection): the posterior's parameters (mean and
  log-variance, so every step still draws a fresh sample as the script does), as safetensors,
  never pickle. I2V entries hold the pair the I2V script makes: the video and the noised first
  frame (its noise drawn once, when the entry was made).
* The key is a hash of everything that decides the numbers (``clip_fields`` and ``entry_key``): the
  file's contents (size, hashes of its first and last MiB; not its path or modification time, so
  a copy of the data on another node, or restored from a backup, reuses the entries), the target (size, crop box, frame indices,
  tags), ``--fps``, the script kind, the VAE's identity (config, a fingerprint of its weights,
  dtype, slicing and tiling settings, diffusers version) and ``FORMAT_VERSION``. Nothing about
  the process (rank, process count, device) is in it, so an entry written by any launch layout
  is read by any other. Any change makes a new entry; prune drops the old ones.
* Writes are atomic (a temporary file in the entry's folder, then ``os.replace``): a run killed
  at any moment leaves whole entries and temporary files, which nothing reads. Two processes
  writing the same key (``cogvx-ext cache fill`` beside a training run) each replace the file
  with a whole entry; the last one stays.
* Every entry is checked when read: its recorded key, tensor names, shapes (the latent shape of
  the target), dtype and finite values. A bad entry is reported with its clip and encoded again.
* Prompt embeddings (``cogvx_prompt_embeddings``): one entry per
  prompt under ``DIR/prompts``, keyed by the text, the text encoder's identity, the tokenizer,
  the sequence length and dtype; kept in memory for the run, so a step costs no encoder call.

Layout: ``DIR/<first two hex digits>/<key>.safetensors`` and ``DIR/prompts/<xx>/<key>.safetensors``.
``cogvx-ext cache fill`` fills the cache ahead of training, ``cogvx-ext cache prune`` removes
entries the dataset no longer reaches (``cogvx_ext.cli.cache``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cogvx_ext import hookimpl
from cogvx_ext.base.errors import UsageError
from cogvx_ext.data.clips import Sample

# Bump when what an entry holds, or how its key is made, changes: old entries then stop matching.
# 2: frame indices count the frames an edit list shows, crops are in display pixels (rotation,
# sample aspect), so an entry of version 1 can hold other pixels under the same key.
# 3: a clip is known by its contents (size, first and last MiB), no longer by its modification time.
FORMAT_VERSION = 3
HEAD_BYTES = 1 << 20  # hashed at each end of a clip; the size covers the rest
PROMPTS_DIR = "prompts"
PROBES_DIR = "probes"  # JSON answers of cogvx_probe, so a warm launch opens no clip
SUFFIX = ".safetensors"
ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.safetensors$")
TEMP_NAME = re.compile(
    r"^\.[0-9a-f]{64}\.safetensors\..*\.tmp$"
)  # cogvx_ext.base.io.write_bytes_atomic's names

# Safetensors metadata keys (strings only).
META_FORMAT = "cogvx_ext.format"
META_KEY = "cogvx_ext.key"
META_CLIP_KEY = "cogvx_ext.clip_key"
META_TEXT_KEY = "cogvx_ext.text_key"
META_FIELDS = "cogvx_ext.fields"
META_SOURCE = "cogvx_ext.source"  # the clip's path or the prompt, for people reading reports

# Tiling settings of AutoencoderKLCogVideoX that change the numbers when tiling is on.
_TILE_ATTRIBUTES = (
    "tile_sample_min_height",
    "tile_sample_min_width",
    "tile_overlap_factor_height",
    "tile_overlap_factor_width",
)
_FINGERPRINT_VALUES = 64  # first values of every weight tensor that enter a model's fingerprint


# ---------------------------------------------------------------------------------------------
# Keys


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The size and hashes of the first and last MiB: cheap, and the same for every copy of a file.

    No modification time: nodes hold copies made at other times (``cp -r``, ``scp``), and each
    would otherwise encode again what another node has cached. A re-encoded video changes its size
    or its index (the ``moov`` box sits at one end of an MP4); an edit in place that keeps the size
    and both ends goes unseen (``cogvx-ext cache prune`` after such an edit, or a new cache).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
        f.seek(max(0, size - HEAD_BYTES))
        tail = f.read(HEAD_BYTES)
    return {
        "size": size,
        "head_sha256": hashlib.sha256(head).hexdigest(),
        "tail_sha256": hashlib.sha256(tail).hexdigest(),
    }


def clip_fields(
    sample: Sample, args: argparse.Namespace, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What decides a sample's pixels: the file, the target, ``--fps``, the format version.

    ``tags`` are in because a plugin that changes the pixels beyond size, crop and frames (an
    augmentation, a colour transform) records that in its targets' tags.
    """
    target = sample.target
    return {
        "format": FORMAT_VERSION,
        "file": identity if identity is not None else file_identity(sample.clip.path),
        "target": {
            "height": target.height,
            "width": target.width,
            "crop": list(target.crop),
            "frames": list(target.frame_indices),
            "tags": [list(tag) for tag in target.tags],
        },
        "fps": getattr(args, "fps", None),
    }


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every weight tensor's name, shape and first values: a fine-tuned copy of a model
    with the same config gets another fingerprint, at the cost of one small copy from the device."""
    state = module.state_dict()
    described = [(name, list(t.shape), str(t.dtype)) for name, t in state.items()]
    firsts = [t.detach().reshape(-1)[:_FINGERPRINT_VALUES].float() for t in state.values() if t.numel()]
    values = torch.cat(firsts).cpu().numpy().tobytes() if firsts else b""
    return hashlib.sha256(canonical_json(described).encode() + values).hexdigest()


def _public_config(config: Any) -> dict[str, Any]:
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Private entries (_name_or_path, _diffusers_version, ...) and the load dtype say where a model
    # came from, not what it computes; the dtype it runs in is recorded on its own.
    ignored = {"transformers_version", "torch_dtype", "dtype"}
    return {k: v for k, v in items.items() if not k.startswith("_") and k not in ignored}


def vae_identity(vae: torch.nn.Module, fingerprint: str | None = None) -> dict[str, Any]:
    """What decides the posterior besides the pixels: config, weights, dtype, slicing and tiling."""
    import diffusers

    tiling = bool(getattr(vae, "use_tiling", False))
    return {
        "class": type(vae).__name__,
        "config_sha256": digest(_public_config(vae.config)),  # scaling_factor included
        "weights": fingerprint or weights_fingerprint(vae),
        "dtype": str(vae.dtype),
        "slicing": bool(getattr(vae, "use_slicing", False)),
        "tiling": tiling,
        "tile": {name: getattr(vae, name, None) for name in _TILE_ATTRIBUTES} if tiling else None,
        "frame_batch": getattr(vae, "num_sample_frames_batch_size", None),
        "diffusers": diffusers.__version__,
    }


def entry_key(clip_key: str, kind: str, vae_id: dict[str, Any]) -> str:
    return digest({"clip": clip_key, "kind": kind, "vae": vae_id})


def probe_key(path: str, stat: os.stat_result) -> str:
    """A clip's probe entry key: the path, size and modification time, so that a warm launch
    reads no clip at all (a file rewritten in place with the same size and time is not seen)."""
    return digest(
        {
            "format": FORMAT_VERSION,
            "path": os.path.abspath(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    )


def probe_entry_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / PROBES_DIR / key[:2] / f"{key}.json"


def video_info_to_json(info: Any) -> dict[str, Any]:
    """Every field of the probe's answer, whatever fields it has (``dataclasses.asdict``)."""
    import dataclasses

    return dataclasses.asdict(info)


def video_info_from_json(data: Any) -> Any:
    """The probe's answer again, or ``None`` when the stored fields are not today's (a newer or
    older cogvx-ext wrote it: probe again)."""
    import dataclasses

    from cogvx_ext.data.clips import VideoInfo

    names = {f.name for f in dataclasses.fields(VideoInfo)}
    if not isinstance(data, dict) or set(data) != names:
        return None

    def frozen(value: Any) -> Any:  # JSON arrays back to tuples: VideoInfo is frozen and hashable
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value

    try:
        return VideoInfo(**{name: frozen(value) for name, value in data.items()})
    except (TypeError, ValueError):
        return None


def entry_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / key[:2] / f"{key}{SUFFIX}"


def text_key(text: str) -> str:
    """The part of a prompt entry's key that prune can compute from the dataset alone."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return {"class": type(tokenizer).__name__, "vocab_sha256": digest(sorted(vocab.items()))}


def text_encoder_identity(
    text_encoder: torch.nn.Module,
    tokenizer: Any,
    fingerprint: str | None = None,
    tokenizer_id: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "class": type(text_encoder).__name__,
        "config_sha256": digest(_public_config(text_encoder.config)),
        "weights": fingerprint or weights_fingerprint(text_encoder),
        "dtype": str(text_encoder.dtype),
        "tokenizer": tokenizer_id or tokenizer_identity(tokenizer),
    }


def prompt_fields(
    text: str, encoder_id: dict[str, Any], max_sequence_length: int, dtype: torch.dtype
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "text": text_key(text),
        "max_sequence_length": int(max_sequence_length),
        "dtype": str(dtype),
        "encoder": encoder_id,
    }


def prompt_entry_path(root: str | os.PathLike, key: str) -> Path:
    return Path(root) / PROMPTS_DIR / key[:2] / f"{key}{SUFFIX}"


def expected_latent_shapes(sample: Sample, vae: torch.nn.Module, kind: str) -> dict[str, tuple[int, ...]]:
    """The parameters' shapes ``[1, 2C, F, H, W]`` the VAE gives for this target (I2V: and its first frame)."""
    config = vae.config
    spatial = 2 ** (len(config.block_out_channels) - 1)
    temporal = config.temporal_compression_ratio
    target = sample.target
    channels, height, width = 2 * config.latent_channels, target.height // spatial, target.width // spatial
    shapes = {"video": (1, channels, (target.num_frames - 1) // temporal + 1, height, width)}
    if kind == "i2v":
        shapes["image"] = (1, channels, 1, height, width)
    return shapes


# ---------------------------------------------------------------------------------------------
# Entries on disk


class BadEntry(Exception):
    """An entry that cannot be trusted; the message says why."""


def write_entry(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: readers see the old file, no file, or this whole one, never a part."""
    from safetensors.torch import save

    from cogvx_ext.base.io import write_bytes_atomic

    data = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, metadata=metadata)
    write_bytes_atomic(path, data)


def read_entry(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (on the CPU) and metadata; ``BadEntry`` for a file that is not a whole safetensors file.

    The file is read into memory rather than memory-mapped: a mapped file changed in place by
    someone else (rsync --inplace, a truncation) would kill the training process with SIGBUS.
    """
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadEntry(f"cannot be read ({exc.strerror or exc})") from exc
    try:
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
        raise BadEntry(
            f"unreadable ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})"
        ) from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, dict(metadata or {})


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the header: what prune needs to decide, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise BadEntry(f"unreadable ({str(exc).splitlines()[0][:100] or type(exc).__name__})") from exc


def check_entry(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    key: str,
    shapes: dict[str, tuple[int, ...] | None],
    dtype: torch.dtype,
) -> None:
    """Raise ``BadEntry`` unless the entry is the one asked for: key, names, shapes, dtype, finite.

    A ``None`` shape checks only that the tensor exists.
    """
    if metadata.get(META_FORMAT) != str(FORMAT_VERSION):
        raise BadEntry(f"format {metadata.get(META_FORMAT)!r}, expected {FORMAT_VERSION}")
    if metadata.get(META_KEY) != key:
        raise BadEntry("its recorded key differs from its name (another entry's file, or a damaged one)")
    if set(tensors) != set(shapes):
        raise BadEntry(f"holds {sorted(tensors)}, expected {sorted(shapes)}")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise BadEntry(f"{name} has shape {list(tensor.shape)}, expected {list(shape)}")
        if tensor.dtype != dtype:
            raise BadEntry(f"{name} is {tensor.dtype}, expected {dtype}")
        if not torch.isfinite(tensor).all():
            raise BadEntry(f"{name} holds NaN or infinite values")


@dataclass(frozen=True)
class CacheFile:
    path: Path
    kind: str  # "entry", "prompt" or "temp"


def scan_cache(root: str | os.PathLike) -> Iterator[CacheFile]:
    """Every file of the cache's layout under ``root``; other files are not ours and are skipped."""
    root = Path(root)
    for base, kind in ((root, "entry"), (root / PROMPTS_DIR, "prompt")):
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            if not (folder.is_dir() and re.fullmatch(r"[0-9a-f]{2}", folder.name)):
                continue
            for path in sorted(folder.iterdir()):
                if ENTRY_NAME.match(path.name) and path.name.startswith(folder.name):
                    yield CacheFile(path, kind)
                elif TEMP_NAME.match(path.name):
                    yield CacheFile(path, "temp")


def remove_stale_temp_files(
    root: str | os.PathLike, older_than_s: float, dry_run: bool = False
) -> list[tuple[Path, int]]:
    """Remove temporary files left by killed writers; younger ones may be a write in progress.

    Returns ``(path, size)`` of each file removed (or, with ``dry_run``, that would be).
    """
    import time

    now, removed = time.time(), []
    for item in scan_cache(root):
        if item.kind != "temp":
            continue
        try:
            stat = item.path.stat()
            if now - stat.st_mtime < older_than_s:
                continue
            if not dry_run:
                item.path.unlink()
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
        removed.append((item.path, stat.st_size))
    return removed


# ---------------------------------------------------------------------------------------------
# The plugin


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    recomputed: int = 0  # bad entries encoded again (also counted as misses)
    store_errors: int = 0
    prompt_hits: int = 0
    prompt_misses: int = 0
    probe_hits: int = 0


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
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise UsageError(
                f"--latent_cache_dir {self.root} is not writable (add --latent_cache_readonly to only read it)"
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
            META_FORMAT: str(FORMAT_VERSION),
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
    # A clip's header answer and its file identity, stored as JSON under its path, size and
    # modification time: a launch with nothing changed neither demuxes nor reads any clip.

    @hookimpl(tryfirst=True, specname="cogvx_probe")
    def load_cached_probe(self, path: str):
        if self.root is None:
            return None
        try:
            stat = os.stat(path)
            key = probe_key(path, stat)
            with open(probe_entry_path(self.root, key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None  # no entry (or no file: the probe below says so)
        info = video_info_from_json(entry.get("info")) if isinstance(entry, dict) else None
        if info is None or entry.get("key") != key:
            return None
        if isinstance(entry.get("file"), dict):
            self._file_ids[(path, stat.st_size, stat.st_mtime_ns)] = entry["file"]
        self._probes_served.add(path)
        self.stats.probe_hits += 1
        return info

    @hookimpl(wrapper=True)
    def cogvx_probe(self, path: str):
        info = yield
        if path in self._probes_served:
            self._probes_served.discard(path)
            return info
        if info is None or self.root is None or self.readonly:
            return info
        from cogvx_ext.base.io import write_json_atomic

        try:
            stat = os.stat(path)
            key = probe_key(path, stat)
            entry = {
                "key": key,
                "path": path,
                "info": video_info_to_json(info),
                "file": self._file_identity(path),
            }
            write_json_atomic(probe_entry_path(self.root, key), entry)
        except (OSError, TypeError, ValueError):
            pass  # not kept: the next launch probes this clip again
        return info

    @hookimpl(wrapper=True)
    def cogvx_encode_sample(self, sample: Sample, vae: torch.nn.Module, kind: str, args: argparse.Namespace):
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
        from cogvx_ext.data.dataset import LatentPosterior

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
        # Fires once, right after the encoding pass (before the DataLoader is made): the summary
        # goes before `yield` so a failing sampler does not hide it.
        if self.stats.hits or self.stats.misses:
            self._report(self.summary())
        return (yield)

    def summary(self) -> str:
        s = self.stats
        text = f"{s.hits} sample(s) read from the cache, {s.misses} encoded"
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
            META_FORMAT: str(FORMAT_VERSION),
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
        return prune(self.root, samples, args, dry_run, temp_age)


def prune(
    root: Path, samples: list[Sample], args: argparse.Namespace, dry_run: bool, temp_age: float
) -> dict[str, Any]:
    """Remove entries whose clip part of the key (file identity, target, ``--fps``, format) no
    sample has, prompt entries whose text is no sample's prompt, unreadable files, and temporary
    files older than ``temp_age``. Reads entry headers only and loads no model, so entries of the
    same clips for another VAE, dtype or script kind are kept."""
    clip_keys = {digest(clip_fields(sample, args)) for sample in samples}
    # Both scripts feed the text encoder the id token and the caption.
    texts = {text_key((getattr(args, "id_token", None) or "") + sample.clip.prompt) for sample in samples}
    kept = removed = freed = 0
    for item in scan_cache(root):
        if item.kind == "temp":
            continue
        try:
            metadata = read_metadata(item.path)
            if item.kind == "entry":
                reachable, what = metadata.get(META_CLIP_KEY) in clip_keys, "not reached by the dataset"
            else:
                reachable, what = metadata.get(META_TEXT_KEY) in texts, "prompt not in the dataset"
            source = metadata.get(META_SOURCE, "?")
        except BadEntry as exc:
            reachable, what, source = False, str(exc), "?"
        if reachable:
            kept += 1
            continue
        removed += 1
        freed += _size(item.path)
        if dry_run:
            print(
                f"would remove {item.path} ({what}: {source if item.kind == 'entry' else repr(source[:80])})"
            )
        else:
            _unlink(item.path)
    temps = remove_stale_temp_files(root, temp_age, dry_run=dry_run)
    for path, size in temps:
        freed += size
        if dry_run:
            print(f"would remove {path} (temporary file older than {temp_age:g} s)")
    return {
        "root": str(root),
        "kept": kept,
        "removed": removed,
        "temporary": len(temps),
        "freed_bytes": freed,
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:  # another prune, or a writer replacing it
        pass


def _describe(sample: Sample) -> str:
    target = sample.target
    return f"{sample.clip.path} [{target.width}x{target.height}, {target.num_frames} frames]"


def _rank_prefix() -> str:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return f" (rank {dist.get_rank()})"
    return ""
