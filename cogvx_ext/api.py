"""The public API for plugin authors: everything a plugin may import from cogvx-ext.

``from cogvx_ext.api import hookimpl, Target, UsageError`` (or the same from ``cogvx_ext``). The
built-in plugins import from here and nowhere else (tests/test_layout.py checks it); every other
module of the package is private and may change without notice.

The names load on first use, so importing this module costs nothing until one is used.

Hooks
    ``hookimpl``, ``hookspec`` (the markers; the specs and their documentation are in hooks.md).
The run
    ``RunContext``: what one run tells its plugins (arguments, model, stage schedule asked once,
    processes, a ``stash`` for per-run data); every hook but ``cogvx_add_arguments`` and
    ``cogvx_stages`` takes it as ``run``.
Errors
    ``UsageError`` (a user's mistake: one line, exit status 2), ``SkipClip`` (leave a clip out,
    with its reason), ``report_warning`` (one ``cogvx-ext: ...`` warning line).
Data
    ``Clip``, ``VideoInfo``, ``Target``, ``Sample``, ``Skipped``, ``Stage``, ``stage_at``,
    ``STAGE_TAG``, ``SCALE_TAG``, ``ModelInfo``, ``latent_shape_key``; helpers for targets:
    ``cover_crop_box``, ``stock_frame_indices``; ``LatentPosterior`` (a posterior as one tensor,
    what a cache answers ``cogvx_encode_sample`` with).
Batch samplers
    ``EpochBatchSampler`` (the base: fixed length, epochs, exact resume, ``describe``),
    ``SamplerResume``, ``fingerprint``, the report protocol ``SamplerReport``, ``ShapeRow``,
    ``LatentShape``, ``MemoryBudget``; stages and alternatives: ``StagedBatchSampler``,
    ``stage_of``, ``stage_seed``, ``alternative_groups``, ``choose_alternatives``, ``full_size``.
Memory estimate
    ``TrainingSetup``, ``setup_from_args``, ``estimate``, ``largest_batch``, ``advice``,
    ``DEFAULT_MARGIN``, ``parse_bytes``, ``format_bytes``; the models and the VAE encode:
    ``model_configs``, ``models_at_start``, ``vae_encode_bytes``; a card's reserved memory:
    ``allocated_within``, ``RESERVE_FACTOR``.
RoPE and positional tables
    ``ROPE_MODES``, ``rotary_embedding``, ``default_rotary_embedding``, ``adapt_learned_posemb``.
Files
    ``write_json_atomic``, ``write_bytes_atomic`` (atomic, honour the umask),
    ``folder_write_problem`` (why a folder cannot take files, or ``None``).
Testing and Python use
    ``build_tiny_model``, ``MODEL_KINDS``, ``write_clip``, ``write_dataset``, ``write_bad_clips``
    (``cogvx_ext.testing``), ``load_trainer``, ``prepare_pipeline``.
"""

from __future__ import annotations

# name -> (module, attribute there)
_WHERE: dict[str, tuple[str, str]] = {
    # hooks
    "hookimpl": ("cogvx_ext.plugin.hookspecs", "hookimpl"),
    "hookspec": ("cogvx_ext.plugin.hookspecs", "hookspec"),
    # the run
    "RunContext": ("cogvx_ext.data.context", "RunContext"),
    # errors
    "UsageError": ("cogvx_ext.base.errors", "UsageError"),
    "SkipClip": ("cogvx_ext.base.errors", "SkipClip"),
    "report_warning": ("cogvx_ext.base.errors", "report_warning"),
    # data
    "Clip": ("cogvx_ext.data.clips", "Clip"),
    "VideoInfo": ("cogvx_ext.data.clips", "VideoInfo"),
    "Target": ("cogvx_ext.data.clips", "Target"),
    "Sample": ("cogvx_ext.data.clips", "Sample"),
    "Skipped": ("cogvx_ext.data.clips", "Skipped"),
    "Stage": ("cogvx_ext.data.clips", "Stage"),
    "stage_at": ("cogvx_ext.data.clips", "stage_at"),
    "STAGE_TAG": ("cogvx_ext.data.clips", "STAGE_TAG"),
    "SCALE_TAG": ("cogvx_ext.data.clips", "SCALE_TAG"),
    "ModelInfo": ("cogvx_ext.model.facts", "ModelInfo"),
    "latent_shape_key": ("cogvx_ext.data.planning", "latent_shape_key"),
    "cover_crop_box": ("cogvx_ext.plugin.defaults", "cover_crop_box"),
    "stock_frame_indices": ("cogvx_ext.data.video", "stock_frame_indices"),
    "LatentPosterior": ("cogvx_ext.data.encoding", "LatentPosterior"),
    # batch samplers
    "EpochBatchSampler": ("cogvx_ext.data.sampling", "EpochBatchSampler"),
    "SamplerResume": ("cogvx_ext.data.sampling", "SamplerResume"),
    "fingerprint": ("cogvx_ext.data.sampling", "fingerprint"),
    "SamplerReport": ("cogvx_ext.data.sampling", "SamplerReport"),
    "ShapeRow": ("cogvx_ext.data.sampling", "ShapeRow"),
    "LatentShape": ("cogvx_ext.data.sampling", "LatentShape"),
    "MemoryBudget": ("cogvx_ext.data.sampling", "MemoryBudget"),
    "StagedBatchSampler": ("cogvx_ext.data.stages", "StagedBatchSampler"),
    "stage_of": ("cogvx_ext.data.stages", "stage_of"),
    "stage_seed": ("cogvx_ext.data.stages", "stage_seed"),
    "alternative_groups": ("cogvx_ext.data.stages", "alternative_groups"),
    "choose_alternatives": ("cogvx_ext.data.stages", "choose_alternatives"),
    "full_size": ("cogvx_ext.data.stages", "full_size"),
    # memory estimate
    "TrainingSetup": ("cogvx_ext.model.memory.setup", "TrainingSetup"),
    "setup_from_args": ("cogvx_ext.model.memory.setup", "setup_from_args"),
    "DEFAULT_MARGIN": ("cogvx_ext.model.memory.setup", "DEFAULT_MARGIN"),
    "estimate": ("cogvx_ext.model.memory.estimate", "estimate"),
    "largest_batch": ("cogvx_ext.model.memory.estimate", "largest_batch"),
    "advice": ("cogvx_ext.model.memory.estimate", "advice"),
    "parse_bytes": ("cogvx_ext.model.memory.units", "parse_bytes"),
    "format_bytes": ("cogvx_ext.model.memory.units", "format_bytes"),
    "model_configs": ("cogvx_ext.model.memory.configs", "model_configs"),
    "models_at_start": ("cogvx_ext.model.memory.encoding", "models_at_start"),
    "vae_encode_bytes": ("cogvx_ext.model.memory.encoding", "vae_encode_bytes"),
    "allocated_within": ("cogvx_ext.model.memory.cards", "allocated_within"),
    "RESERVE_FACTOR": ("cogvx_ext.model.memory.cards", "RESERVE_FACTOR"),
    # RoPE and positional tables
    "ROPE_MODES": ("cogvx_ext.model.rope", "MODES"),
    "rotary_embedding": ("cogvx_ext.model.rope", "rotary_embedding"),
    "default_rotary_embedding": ("cogvx_ext.model.rope", "default_rotary_embedding"),
    "adapt_learned_posemb": ("cogvx_ext.model.rope", "adapt_learned_posemb"),
    # files
    "write_json_atomic": ("cogvx_ext.base.io", "write_json_atomic"),
    "write_bytes_atomic": ("cogvx_ext.base.io", "write_bytes_atomic"),
    "folder_write_problem": ("cogvx_ext.base.io", "folder_write_problem"),
    # testing and Python use
    "build_tiny_model": ("cogvx_ext.testing", "build_tiny_model"),
    "MODEL_KINDS": ("cogvx_ext.testing", "MODEL_KINDS"),
    "write_clip": ("cogvx_ext.testing", "write_clip"),
    "write_dataset": ("cogvx_ext.testing", "write_dataset"),
    "write_bad_clips": ("cogvx_ext.testing", "write_bad_clips"),
    "load_trainer": ("cogvx_ext.script.activation", "load_trainer"),
    "prepare_pipeline": ("cogvx_ext.inference", "prepare_pipeline"),
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        module, attribute = _WHERE[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cogvx_ext.api' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
