from cogvx_ext import hookimpl


@hookimpl
def cogvx_configure(arguments):
    pass
