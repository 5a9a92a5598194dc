from cogvx_ext import hookimpl


@hookimpl
def cogvx_configur(args):
    pass
