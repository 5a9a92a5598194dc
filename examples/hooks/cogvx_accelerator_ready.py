from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_accelerator_ready(accelerator):
    accelerator.print(f"training on {accelerator.num_processes} process(es)")
