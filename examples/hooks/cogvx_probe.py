"""Reads the size of clips saved as NumPy arrays (`[F, 3, H, W]` floats in `[-1, 1]`); the
`cogvx_load_pixels` example decodes them."""

from cogvx_ext.api import VideoInfo, hookimpl


@hookimpl
def cogvx_probe(path):
    if path.endswith(".npy"):
        import numpy

        frames, _, height, width = numpy.load(path, mmap_mode="r").shape
        return VideoInfo(width=width, height=height, num_frames=frames, fps=8.0)
