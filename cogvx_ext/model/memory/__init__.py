"""Peak accelerator memory of one training step, estimated on the CPU without weights or a GPU.

What it models: the diffusers CogVideoX LoRA scripts as they run (``train_cogvideox_lora.py``,
``train_cogvideox_image_to_video_lora.py``) under ``accelerate``:

* the transformer built from its config, frozen, in the weight dtype of ``--mixed_precision``
  (fp32 for ``no``), with a LoRA adapter of ``--rank`` on ``to_k, to_q, to_v, to_out.0`` (peft puts
  the adapter in the base layer's dtype; the scripts upcast it to fp32 only for fp16);
* its gradients (the LoRA's, all of them counted as resident: the steady state with gradient
  accumulation, and the end of every backward without it);
* the optimizer's states: AdamW/Adam two per parameter in its dtype (plus one parameter-sized
  temporary in the foreach step), ``--use_8bit_adam`` (bitsandbytes) one byte each plus a float
  absmax per 256-block, Prodigy four (``p0``, ``s``, ``exp_avg``, ``exp_avg_sq``);
* the text encoder (T5 encoder, from its config) while it is on the device: the scripts keep it
  there the whole run; the core moves it to the CPU when a plugin answers every prompt embedding
  (``latent_cache``), so ``text_encoder_on_device=False`` then. The VAE stays on the device in both
  scripts whatever the plugins do (encoding happens before training; nothing moves it off);
* the step: the batch as it reaches the device (fp32 latents, their weight-dtype copy, noise,
  the noisy input, prompt embeddings, the rotary tables), the forward under accelerate's autocast
  (emulating CUDA's policy: matmuls and attention in the low precision, layer norms in fp32), the
  loss and the backward, with or without gradient checkpointing;
* with validation on, the validation pipeline's peak: everything resident except gradients, the
  text encoder back on the device (the pipeline moves it), a second VAE (the pipeline loads its
  own), and the larger of the transformer's inference forward (batch 2, classifier-free
  guidance) and the VAE decode (traced, without tiling: the validation pipeline's VAE is a fresh
  one).

How: the step is run under PyTorch's ``FakeTensorMode`` (shapes and dtypes only, no data) with a
``TorchDispatchMode`` that counts the bytes of every live tensor storage created by an operator
and keeps the high-water mark: the same accounting as ``torch.cuda.memory_allocated`` minus the
allocator's rounding. Attention is the fused kernel (flash / memory-efficient on CUDA, its CPU
counterpart here): no ``tokens x tokens`` matrix is kept, as on a GPU. Every transformer block is
the same after the first (whose input comes from the patch embedding), so models of 2 and 3
blocks are traced and the activation peak is extrapolated linearly to the real depth; the same
for the batch size (1 and 2). The traced copies are built once; traces are cached per shape in the
process and on disk (``store``: a plan run again traces nothing it traced before).

Around the step: ``cards`` turns the allocated estimate into reserved memory and a verdict per
common GPU with the cheapest change that fits (``estimate.fitting_change``); ``encoding`` estimates
the VAE encode (cache fill, or a training run's start), with and without tiling.

What is NOT counted (the estimate is *allocated* memory, ``max_memory_allocated``):

* the caching allocator's reserve and fragmentation (``max_memory_reserved`` is typically 5-20 %
  above allocated, more with changing shapes unless
  ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``);
* the CUDA context and kernel images (about 0.3-0.6 GiB per process, outside PyTorch's counters);
* kernels' workspaces (cuBLAS, cuDNN, flash attention) and NCCL buffers with several processes;
* the prompt encoding's own activations (small, and before the transformer's forward);
* the stock T2V script's latents when not sharded by cogvx-ext (it keeps every encoded posterior
  on the device: with cogvx-ext's data plugins they live on the CPU);
* validation at other sizes than ``--height x --width`` (rope_rescale's ``--validation_resolutions``);
* DeepSpeed, ``torch.compile``, CPU offloading.
"""
