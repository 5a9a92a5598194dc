"""Counts the transformer's parameters; LoRA is not added yet."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_transformer_loaded(transformer):
    count = sum(p.numel() for p in transformer.parameters())
    print(f"transformer: {transformer.config.num_layers} layers, {count} parameters")
