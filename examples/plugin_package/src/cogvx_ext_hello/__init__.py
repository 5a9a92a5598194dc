"""An installable cogvx-ext plugin: a class, so each run gets its own instance and state."""

from cogvx_ext.api import hookimpl


class Hello:
    def __init__(self):
        self.greeting = None

    @hookimpl
    def cogvx_add_arguments(self, parser):
        parser.add_argument("--hello_name", default="world")

    @hookimpl
    def cogvx_configure(self, args):
        self.greeting = f"hello, {args.hello_name}"
        args.hello_greeting = self.greeting
