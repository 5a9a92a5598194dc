from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_exception(exc):
    print("training failed:", type(exc).__name__)
