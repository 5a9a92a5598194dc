"""Decodes the `.npy` clips of the `cogvx_probe` example: the target's frames, cropped and resized.
(The default probe rejects what is not a video: answer `cogvx_probe` too for files of your own
format.)"""

from cogvx_ext.api import hookimpl


@hookimpl
def cogvx_load_pixels(sample):
    if sample.clip.path.endswith(".npy"):
        import numpy
        import torch
        import torch.nn.functional as F

        target = sample.target
        top, left, height, width = target.crop
        frames = torch.from_numpy(numpy.load(sample.clip.path)[list(target.frame_indices)])
        frames = frames[:, :, top : top + height, left : left + width].float()
        return F.interpolate(frames, size=(target.height, target.width), mode="bilinear", antialias=True)
