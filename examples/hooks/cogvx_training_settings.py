"""A flag that changes what is trained, recorded with every checkpoint: resuming with another value
stops the run at start with one line (``--allow_changed_plugins_on_resume`` continues anyway)."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_add_arguments(parser):
    parser.add_argument("--caption_dropout", type=float, default=0.0)


@hookimpl
def cogvx_training_settings(args):
    return {"caption_dropout": args.caption_dropout}
