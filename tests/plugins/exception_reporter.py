from cogvx_ext import hookimpl


@hookimpl
def cogvx_exception(exc):
    print(f"exception_reporter saw {type(exc).__name__}: {exc}", flush=True)
