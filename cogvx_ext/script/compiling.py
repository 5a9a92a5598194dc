"""torch.compile with buckets: the transformer's blocks compiled regionally, compilations bounded
and logged, compile caches kept between launches.

accelerate compiles the prepared transformer when its dynamo backend is set (``accelerate config``,
``accelerate launch --dynamo_backend inductor``, ``ACCELERATE_DYNAMO_BACKEND``): the whole model,
once per new input shape. With buckets every latent shape is a new input shape, and dynamo's
answer, automatic dynamic shapes, makes inductor fail on the whole CogVideoX transformer in torch
2.14 ("cannot determine truth value of Relational" while ordering strides). So cogvx-ext compiles
the way diffusers' ``ModelMixin.compile_repeated_blocks`` does (CogVideoX declares no
``_repeated_blocks``; its blocks are ``transformer_blocks``): each block compiled in place with
accelerate's settings, the rest of the model eager, and accelerate's own whole-model compile left
out of ``accelerator.prepare``:

* Regional: all blocks share one code object, so dynamo compiles one block's code per input
  variant and every block reuses it. Inductor accepts the block with a symbolic sequence length
  (benchmarks/compile_buckets.py), so after the first bucket's static graphs the second bucket
  compiles once more, dynamic, and every later bucket reuses that: a new bucket costs nothing.
  ``COGVX_EXT_COMPILE_STATIC=1`` (for a torch whose inductor rejects the dynamic block) compiles
  each latent shape static instead, still one block's compile per shape; accelerate's
  ``--dynamo_use_dynamic`` (dynamic from the first shape) is honoured.
* The recompile limit is raised to cover the plan's latent shapes either way, so no bucket runs
  eagerly; every compilation is logged at the step that made it with its latent shape(s), its
  compile time and the count so far; a recompile limit hit anyway (another compiled function, a
  user's limit) is repeated as a cogvx-ext line that says the frame now runs eagerly.
* inductor's FX graph and AOT autograd caches go to ``$COGVX_EXT_COMPILE_CACHE`` (default
  ``$XDG_CACHE_HOME/cogvx-ext/torch-compile``; ``off``: torch's own, under the temp folder), unless
  ``TORCHINDUCTOR_CACHE_DIR`` is set: a relaunch compiles from the cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("cogvx_ext.compile")
LIMIT_MESSAGE = "hit config."  # dynamo's "torch._dynamo hit config.recompile_limit (8)" warning
ENV_CACHE = "COGVX_EXT_COMPILE_CACHE"
ENV_STATIC = "COGVX_EXT_COMPILE_STATIC"
# dynamo's time in compiling frames (forward, AOT autograd, inductor) and AOT autograd's lazy
# backward compile: torch._dynamo.utils.compilation_time_metrics keys (torch 2.14).
_COMPILE_TIMERS = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")


def dynamo_backend(accelerator: Any) -> str | None:
    """The backend accelerate compiles the prepared models with; None when it does not compile."""
    plugin = getattr(getattr(accelerator, "state", None), "dynamo_plugin", None)
    backend = getattr(plugin, "backend", None)
    name = str(getattr(backend, "value", backend) or "no")
    return None if name.lower() == "no" else name.lower()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_seconds() -> float:
    """Seconds spent compiling in this process so far (forward frames and lazy backward graphs)."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(sum(compilation_time_metrics.get(name, ())) for name in _COMPILE_TIMERS))


def static_shapes_asked() -> bool:
    return os.environ.get(ENV_STATIC, "").lower() in ("1", "true", "yes", "on")


def use_compile_cache() -> str:
    """Point inductor's on-disk caches at cogvx-ext's folder (see the module); returns the folder used."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    mine = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if mine and os.path.abspath(mine) != os.path.abspath(default_cache_dir()):
        return mine  # the user's own choice
    value = os.environ.get(ENV_CACHE, "")
    if value.lower() in ("off", "0", "none"):
        return mine or default_cache_dir()
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = str(Path(value).expanduser() if value else home / "cogvx-ext" / "torch-compile")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder  # read by inductor and its compile workers
    return folder


def graphs_of(function: Any) -> int:
    """Graphs dynamo holds for this function's code (each input variant compiled)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(function.__code__))


def compile_blocks(transformer: Any, **compile_kwargs: Any) -> list:
    """Compile each of the transformer's repeated blocks in place, as diffusers'
    ``compile_repeated_blocks`` does; returns them. The model's state dict, its hooks and
    ``unwrap_model`` see the same modules as before."""
    blocks = list(getattr(transformer, "transformer_blocks", None) or ())
    for block in blocks:
        block.compile(**compile_kwargs)
    return blocks


def accelerate_compile_kwargs(accelerator: Any) -> dict[str, Any]:
    """The ``torch.compile`` arguments accelerate would use (backend, mode, fullgraph, dynamic, options)."""
    plugin = accelerator.state.dynamo_plugin
    kwargs = plugin.to_kwargs()  # only what differs from the defaults
    kwargs.pop("use_regional_compilation", None)
    kwargs["backend"] = dynamo_backend(accelerator)
    return kwargs


def leave_compiling_to_us(accelerator: Any) -> None:
    """``accelerator.prepare`` without accelerate's own compile (the blocks are compiled already):
    its dynamo backend reads "no" while it prepares, and is restored after."""
    from accelerate.utils import DynamoBackend

    plugin = accelerator.state.dynamo_plugin

    @contextlib.contextmanager
    def no_backend():
        backend = plugin.backend
        plugin.backend = DynamoBackend.NO
        try:
            yield
        finally:
            plugin.backend = backend

    for name in ("prepare", "prepare_model"):
        real = getattr(accelerator, name)

        @functools.wraps(real)
        def prepare(*args, _real=real, **kwargs):
            with no_backend():
                return _real(*args, **kwargs)

        setattr(accelerator, name, prepare)


class _LimitHits(logging.Filter):
    """Repeats dynamo's recompile-limit warning as one cogvx-ext line that says what it costs."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if LIMIT_MESSAGE in str(record.msg):
            self.hits += 1
            log.warning(
                "cogvx-ext: torch.compile reached its recompile limit (%s): from now on the frame named "
                "above runs EAGERLY (not compiled) for new shapes; raise torch._dynamo.config.recompile_limit",
                record.getMessage().splitlines()[0],
            )
        return True


class CompileWatch:
    """Set dynamo up for ``shapes`` latent shapes and report its compilations step by step.

    ``blocks``: the transformer blocks compiled regionally (none: the whole model, the caller's
    torch.compile); each log line then says how many of the graphs are the block's: all of them
    when nothing else is compiled. ``dynamic``: leave dynamo's automatic dynamic shapes on
    (regional only; the whole model compiles static). ``cache``: the compile cache folder, for the log.
    """

    def __init__(
        self,
        backend: str,
        shapes: int,
        *,
        blocks: list | None = None,
        dynamic: bool = False,
        cache: str | None = None,
    ) -> None:
        import torch._dynamo.config as config

        self.block_forward = type(blocks[0]).forward if blocks else None
        self.backend = backend
        self.shapes = shapes
        self.seen = compiled_graphs()
        self.seconds = compile_seconds()
        self.latent_shapes: set[tuple[int, int, int]] = set()  # since the last logged step
        self.limit_hits = _LimitHits()
        before = config.recompile_limit
        config.automatic_dynamic_shapes = dynamic
        # Room for a shape compiled twice (a grad-mode guard, the first block's strided input),
        # never below the setting.
        config.recompile_limit = max(before, 2 * shapes)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * shapes)
        logging.getLogger("torch._dynamo.convert_frame").addFilter(self.limit_hits)
        what = (
            f"regionally, {len(blocks)} transformer block(s) sharing one compiled block"
            if blocks
            else "the whole transformer"
        )
        shapes_how = (
            "static for the first, then one dynamic (symbolic sequence length) for the rest"
            if dynamic
            else "static, once per shape"
        )
        log.info(
            "cogvx-ext: torch.compile (%s) %s, %d latent shape(s): %s; recompile limit %d%s; compile cache %s",
            backend,
            what,
            shapes,
            shapes_how,
            config.recompile_limit,
            f" (raised from {before})" if config.recompile_limit != before else "",
            cache or "torch's default",
        )

    def close(self) -> None:
        logging.getLogger("torch._dynamo.convert_frame").removeFilter(self.limit_hits)

    def saw(self, latent_shape: tuple[int, int, int]) -> None:
        self.latent_shapes.add(tuple(latent_shape))

    def step_end(self, step: Any) -> None:
        now, seconds = compiled_graphs(), compile_seconds()
        if now != self.seen:
            shapes = ", ".join("x".join(map(str, s)) for s in sorted(self.latent_shapes)) or "unknown"
            block = self.block_forward
            log.info(
                "cogvx-ext: torch.compile: %d new graph(s) at step %s (latent FxHxW %s) in %.1f s, "
                "%d in all%s for %d planned latent shape(s)",
                now - self.seen,
                step,
                shapes,
                seconds - self.seconds,
                now,
                f" ({graphs_of(block)} of them {block.__qualname__.split('.')[0]}'s)" if block else "",
                self.shapes,
            )
        self.seen, self.seconds = now, seconds
        self.latent_shapes.clear()
