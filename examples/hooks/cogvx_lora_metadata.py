"""Records the flag of the `cogvx_add_arguments` example with the saved LoRA (in
`cogvx_ext.json`'s `settings`)."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_lora_metadata(args):
    return {"log_shapes_every": args.log_shapes_every}
