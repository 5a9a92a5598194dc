"""Inference the way training saw it: load a cogvx-ext LoRA into a stock diffusers pipeline.

::

    from diffusers import CogVideoXPipeline
    from cogvx_ext.inference import prepare_pipeline, write_video

    pipe = prepare_pipeline(CogVideoXPipeline.from_pretrained("THUDM/CogVideoX-5b"), "my-lora")
    video = pipe("a cat", height=576, width=1024).frames[0]
    write_video("cat.mp4", video, fps=8)  # mp4 with PyAV, which the package installs

``cogvx-ext generate`` does the same from the command line.

The training run wrote ``cogvx_ext.json`` next to the LoRA weights: the plugins of the run and
the settings they recorded (``cogvx_lora_metadata``). The pipeline gets the same plugins, with
those settings as their ``args``, through the hooks that act on a pipeline: the forward hooks
(rotary embedding, 1.5 frame padding), ``cogvx_pipeline_loaded`` (the learned table) and
``cogvx_snr_shift`` (the scheduler denoises with the SNR shift of the size asked for).
"""

from cogvx_ext.data.video_writer import write_video
from cogvx_ext.plugin.lora_pipeline import make_inference_plugin_manager, prepare_pipeline, recorded_args

__all__ = ["make_inference_plugin_manager", "prepare_pipeline", "recorded_args", "write_video"]
