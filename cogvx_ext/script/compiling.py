"""torch.compile with buckets: a bounded number of compilations, none lost silently.

accelerate compiles the prepared transformer when its dynamo backend is set (``accelerate config``,
``accelerate launch --dynamo_backend inductor``, ``ACCELERATE_DYNAMO_BACKEND``). dynamo compiles once
per new input shape; past ``torch._dynamo.config.recompile_limit`` (8) it stops compiling that
code and runs it eagerly for the rest of the run, with one warning among many lines. With buckets,
every latent shape is a new input shape:

* dynamo's automatic dynamic shapes (a second shape recompiles with the changed dimensions
  symbolic) makes inductor fail on CogVideoX in torch 2.14 ("cannot determine truth value of
  Relational" while ordering strides, measured by benchmarks/compile_buckets.py), so the run stops
  at its second bucket. It is switched off: each latent shape gets its own graph, as fast per
  step as a single-shape run.
* The recompile limit is raised to the number of latent shapes the plan holds (known before the
  first step), so the count of compilations is bounded by the plan and no bucket runs eagerly.
* Every compilation is logged at the step that made it, with the count so far; a recompile limit
  hit anyway (another compiled function, a user's limit) is repeated as a cogvx-ext line that says
  the frame now runs eagerly.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("cogvx_ext.compile")
LIMIT_MESSAGE = "hit config."  # dynamo's "torch._dynamo hit config.recompile_limit (8)" warning


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
    """Set dynamo up for ``shapes`` latent shapes and report its compilations step by step."""

    def __init__(self, backend: str, shapes: int) -> None:
        import torch._dynamo.config as config

        self.backend = backend
        self.shapes = shapes
        self.seen = compiled_graphs()
        self.limit_hits = _LimitHits()
        before = config.recompile_limit
        config.automatic_dynamic_shapes = False
        # Room for a shape compiled twice (a grad-mode or plugin-state guard), never below the setting.
        config.recompile_limit = max(before, 2 * shapes)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * shapes)
        logging.getLogger("torch._dynamo.convert_frame").addFilter(self.limit_hits)
        log.info(
            "cogvx-ext: torch.compile (%s) with %d latent shape(s): each shape compiles once, static "
            "(dynamic latent shapes fail in inductor); recompile limit %d%s",
            backend,
            shapes,
            config.recompile_limit,
            f" (raised from {before})" if config.recompile_limit != before else "",
        )

    def close(self) -> None:
        logging.getLogger("torch._dynamo.convert_frame").removeFilter(self.limit_hits)

    def step_end(self, step: Any) -> None:
        now = compiled_graphs()
        if now != self.seen:
            log.info(
                "cogvx-ext: torch.compile: %d new graph(s) at step %s, %d in all for %d planned latent shape(s)",
                now - self.seen,
                step,
                now,
                self.shapes,
            )
            self.seen = now
