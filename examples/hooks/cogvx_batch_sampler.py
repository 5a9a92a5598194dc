"""One sample per batch, the largest first, so that a shape that does not fit fails at the first
step rather than hours in. A list of index lists is a batch sampler; the tail is cut to a
multiple of the processes."""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_batch_sampler(samples, num_replicas):
    def size(i):
        target = samples[i].target
        return target.num_frames * target.height * target.width

    order = sorted(range(len(samples)), key=size, reverse=True)
    return [[i] for i in order[: len(order) - len(order) % num_replicas]]
