"""What the estimate depends on: a run's configuration, from the training script's flags."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from cogvx_ext.base.errors import UsageError
from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.model.memory.configs import RELEASED_T5, model_configs

LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


OPTIMIZERS = ("adam", "adamw", "prodigy")


MIXED_PRECISIONS = ("no", "fp16", "bf16")


# Extra room asked of a budget by default: the estimate is allocated memory; the allocator's
# reserve and the CUDA context come on top (see the module docstring).
DEFAULT_MARGIN = 0.15


@dataclass(frozen=True)
class TrainingSetup:
    """What decides the memory of a step, besides the shape and the batch size.

    ``transformer`` is the transformer's config as JSON text (hashable, so traces cache per setup).
    """

    transformer: str
    text_encoder: str = json.dumps(RELEASED_T5, sort_keys=True)
    vae: str = "{}"
    rank: int = 128
    lora_alpha: float = 128.0
    optimizer: str = "adamw"
    use_8bit_adam: bool = False
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    text_encoder_on_device: bool = True
    vae_on_device: bool = True
    validation: tuple[int, int, int] | None = None  # (frames, height, width) of validation videos
    autocast: bool = True  # accelerate's autocast around the forward (False: pure low precision)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise UsageError(
                f"--mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, not {self.mixed_precision!r}"
            )
        if self.rank < 1:
            raise UsageError(f"--rank must be at least 1, not {self.rank}")

    @classmethod
    def build(cls, transformer: dict, text_encoder: dict | None = None, vae: dict | None = None, **kw):
        return cls(
            transformer=json.dumps(_plain(transformer), sort_keys=True),
            text_encoder=json.dumps(_plain(text_encoder or RELEASED_T5), sort_keys=True),
            vae=json.dumps(_plain(vae or {}), sort_keys=True),
            **kw,
        )

    @property
    def transformer_config(self) -> dict[str, Any]:
        return json.loads(self.transformer)

    @property
    def model(self) -> ModelInfo:
        return ModelInfo.from_config(self.transformer_config)

    @property
    def num_layers(self) -> int:
        return int(self.transformer_config.get("num_layers", 30))

    def describe(self) -> str:
        optimizer = (
            "8-bit " + self.optimizer
            if self.use_8bit_adam and self.optimizer != "prodigy"
            else self.optimizer
        )
        return (
            f"{self.model.name} ({self.num_layers} layers), LoRA rank {self.rank}, {optimizer}, "
            f"mixed precision {self.mixed_precision}, gradient checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}, text encoder "
            f"{'on the device' if self.text_encoder_on_device else 'on the CPU'}, VAE "
            f"{'on the device' if self.vae_on_device else 'on the CPU'}, validation "
            + (
                "off"
                if self.validation is None
                else "{1}x{0}x{2}".format(*self.validation[1:], self.validation[0])
            )
        )


def _plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def setup_from_args(
    args: Any,
    model: str | None = None,
    text_encoder_on_device: bool = True,
    transformer_config: dict | None = None,
    mixed_precision: str | None = None,
) -> TrainingSetup:
    """The setup of a run from the training script's flags (an argparse namespace).

    ``text_encoder_on_device``: False when a chosen plugin answers every prompt embedding (the core
    then moves the text encoder to the CPU for the rest of the run). ``transformer_config`` (a
    loaded model's) and ``mixed_precision`` (the accelerator's) replace what the flags say.
    """
    pretrained = getattr(args, "pretrained_model_name_or_path", None)
    if transformer_config is not None:
        try:
            _, text, vae = model_configs(pretrained, model or getattr(args, "model", None))
        except UsageError:
            text, vae = dict(RELEASED_T5), {}
        transformer = dict(transformer_config)
    else:
        transformer, text, vae = model_configs(pretrained, model or getattr(args, "model", None))
    optimizer = str(getattr(args, "optimizer", None) or "adamw").lower()
    validation = None
    if getattr(args, "validation_prompt", None):
        # The scripts' validation: --height x --width, the pipeline's default frame count.
        validation = (
            int(transformer.get("sample_frames", 49)),
            int(getattr(args, "height", 480) or 480),
            int(getattr(args, "width", 720) or 720),
        )
    return TrainingSetup.build(
        transformer,
        text,
        vae,
        rank=int(getattr(args, "rank", None) or 128),
        lora_alpha=float(getattr(args, "lora_alpha", None) or 128),
        optimizer=optimizer if optimizer in OPTIMIZERS else "adamw",
        use_8bit_adam=bool(getattr(args, "use_8bit_adam", False)),
        # The script's default (None) leaves it to accelerate, whose launcher exports its choice.
        mixed_precision=str(
            mixed_precision
            or getattr(args, "mixed_precision", None)
            or os.environ.get("ACCELERATE_MIXED_PRECISION")
            or "no"
        ),
        gradient_checkpointing=bool(getattr(args, "gradient_checkpointing", False)),
        text_encoder_on_device=text_encoder_on_device,
        validation=validation,
    )


def add_setup_arguments(parser: Any) -> None:
    """The training script's flags the estimate depends on (same names and defaults), for tools
    that take the training command's flags (``cogvx-ext plan``); flags the parser has are kept."""
    group = parser.add_argument_group("the training script's flags the memory estimate reads")
    flags = [
        ("--rank", dict(type=int, default=128)),
        ("--lora_alpha", dict(type=float, default=128)),
        ("--mixed_precision", dict(choices=MIXED_PRECISIONS, default=None)),
        ("--gradient_checkpointing", dict(action="store_true")),
        ("--optimizer", dict(type=str.lower, choices=OPTIMIZERS, default="adam")),
        ("--use_8bit_adam", dict(action="store_true")),
        ("--validation_prompt", dict(default=None)),
    ]
    for flag, options in flags:
        if flag not in parser._option_string_actions:
            group.add_argument(flag, **options)
