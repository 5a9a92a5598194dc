"""A small image-to-video LoRA trainer with the seams of diffusers'
``train_cogvideox_image_to_video_lora.py``; the twin of tiny_t2v_trainer.py.

CI has no copy of the diffusers script, so the integration tests train with this one; pointing
COGVX_EXT_I2V_TRAINER at the real script runs the same tests against it. Written from scratch, it
keeps everything cogvx-ext reaches into where the real script has it: ``get_args()`` with the
same flags and defaults, the module-level names ``main`` looks up when it runs, the closures
handed to ``DataLoader`` and to the accelerator's state hooks, and the order of work in
``main``. Comments starting "real:" name a behaviour of the real script that cogvx-ext relies
on or must survive; reproduce those faithfully, bugs included.

Left out: Hub datasets and uploads, DeepSpeed, 8-bit Adam, tracker videos. No torchvision.
"""

import argparse
import logging
import math
import os
import random
import shutil
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from accelerate.logging import get_logger
from accelerate.utils import (
    DistributedDataParallelKwargs,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    set_seed,
)
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.optimization import get_scheduler
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid
from diffusers.training_utils import cast_training_params, free_memory
from diffusers.utils import convert_unet_state_dict_to_peft, load_image
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoTokenizer, T5EncoderModel

logger = get_logger(__name__)


def get_args():
    # real: one local parser, returned parsed; cogvx-ext adds its flags at parse_args().
    parser = argparse.ArgumentParser(description="Tiny CogVideoX image-to-video LoRA trainer (tests).")
    add = parser.add_argument
    # Model
    add("--pretrained_model_name_or_path", type=str, default=None, required=True)
    add("--revision", type=str, default=None)
    add("--variant", type=str, default=None)
    add("--cache_dir", type=str, default=None)
    # Data
    add("--dataset_name", type=str, default=None, help="Not supported: use --instance_data_root.")
    add("--dataset_config_name", type=str, default=None)
    add("--instance_data_root", type=str, default=None)
    add("--video_column", type=str, default="video")
    add("--caption_column", type=str, default="text")
    add("--id_token", type=str, default=None)
    add("--dataloader_num_workers", type=int, default=0)
    # Validation
    add("--validation_prompt", type=str, default=None)
    add("--validation_images", type=str, default=None, help="Image paths, one per validation prompt.")
    add("--validation_prompt_separator", type=str, default=":::")
    add("--num_validation_videos", type=int, default=1)
    add("--validation_epochs", type=int, default=50)
    add("--guidance_scale", type=float, default=6)
    add("--use_dynamic_cfg", action="store_true", default=False)
    # Training
    add("--seed", type=int, default=None)
    add("--rank", type=int, default=128)
    add("--lora_alpha", type=float, default=128)
    add("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    add("--output_dir", type=str, default="cogvideox-i2v-lora")
    add("--height", type=int, default=480)
    add("--width", type=int, default=720)
    add("--fps", type=int, default=8)  # real: accepted, never used to sample frames
    add("--max_num_frames", type=int, default=49)
    add("--skip_frames_start", type=int, default=0)
    add("--skip_frames_end", type=int, default=0)
    add("--train_batch_size", type=int, default=4)
    add("--num_train_epochs", type=int, default=1)
    add("--max_train_steps", type=int, default=None)
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", type=str, default=None)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--gradient_checkpointing", action="store_true")
    add("--learning_rate", type=float, default=1e-4)
    add("--scale_lr", action="store_true", default=False)
    add("--lr_scheduler", type=str, default="constant")
    add("--lr_warmup_steps", type=int, default=500)
    add("--lr_num_cycles", type=int, default=1)
    add("--lr_power", type=float, default=1.0)
    add("--enable_slicing", action="store_true", default=False)
    add("--enable_tiling", action="store_true", default=False)
    add("--noised_image_dropout", type=float, default=0.05, help="Image dropout probability.")
    # Optimizer
    add(
        "--optimizer", type=lambda s: s.lower(), default="adam", choices=["adam", "adamw"]
    )  # real: also prodigy
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.95)
    add("--adam_weight_decay", type=float, default=1e-04)
    add("--adam_epsilon", type=float, default=1e-08)
    add("--max_grad_norm", type=float, default=1.0)
    # Other (the real script's Hub, 8-bit Adam, Prodigy and TF32 flags are left out)
    add("--tracker_name", type=str, default=None)
    add("--logging_dir", type=str, default="logs")
    add("--report_to", type=str, default=None)
    add("--nccl_timeout", type=int, default=600)
    return parser.parse_args()


def _nonblank_lines(path):
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class VideoDataset(Dataset):
    """Every clip decoded and stretched to --height x --width by decord; all kept in memory.

    real: decodes everything at construction, to float32 [F, C, H, W] in [-1, 1]; main() then
    replaces ``instance_videos`` by VAE posteriors.
    """

    def __init__(
        self,
        instance_data_root=None,
        dataset_name=None,
        dataset_config_name=None,
        caption_column="text",
        video_column="video",
        height=480,
        width=720,
        fps=8,
        max_num_frames=49,
        skip_frames_start=0,
        skip_frames_end=0,
        cache_dir=None,
        id_token=None,
    ):
        super().__init__()
        self.instance_data_root = Path(instance_data_root) if instance_data_root is not None else None
        self.dataset_name, self.dataset_config_name, self.cache_dir = (
            dataset_name,
            dataset_config_name,
            cache_dir,
        )
        self.caption_column, self.video_column = caption_column, video_column
        self.height, self.width = height, width
        self.fps, self.max_num_frames = fps, max_num_frames
        self.skip_frames_start, self.skip_frames_end = skip_frames_start, skip_frames_end
        self.id_token = id_token or ""
        if dataset_name is not None:
            raise ValueError("the tiny trainer reads --instance_data_root folders only, not --dataset_name")
        self.instance_prompts, self.instance_video_paths = self._load_dataset_from_local_path()
        # real: the I2V script prefixes the id token once, here: main() later replaces the prompts
        # by their embeddings.
        self.instance_prompts = [self.id_token + prompt for prompt in self.instance_prompts]
        self.num_instance_videos = len(self.instance_video_paths)
        if self.num_instance_videos != len(self.instance_prompts):
            raise ValueError(
                f"found {len(self.instance_prompts)} prompts and {self.num_instance_videos} videos; "
                "--caption_column and --video_column must list as many lines"
            )
        self.instance_videos = self._preprocess_data()

    def __len__(self):
        return self.num_instance_videos

    def __getitem__(self, index):
        return {
            "instance_prompt": self.instance_prompts[index],
            "instance_video": self.instance_videos[index],
        }

    def _load_dataset_from_local_path(self):
        root = self.instance_data_root
        if root is None or not root.exists():
            raise ValueError("Instance videos root folder does not exist")
        for flag, name in (("--caption_column", self.caption_column), ("--video_column", self.video_column)):
            if not (root / name).is_file():
                raise ValueError(f"Expected `{flag}` to name a line-separated file in --instance_data_root")
        prompts = _nonblank_lines(root / self.caption_column)
        paths = [root / line for line in _nonblank_lines(root / self.video_column)]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise ValueError(f"--video_column lists files that do not exist: {', '.join(missing)}")
        return prompts, paths

    def _frame_indices(self, num_frames):
        # real: skip start/end; keep all if they fit, else a stride of (span // max) frames.
        start = min(self.skip_frames_start, num_frames)
        end = max(0, num_frames - self.skip_frames_end)
        if end <= start:
            return [start]
        if end - start <= self.max_num_frames:
            return list(range(start, end))
        return list(range(start, end, (end - start) // self.max_num_frames))

    def _preprocess_data(self):
        import decord

        # real: switches decord's process-wide bridge to torch (get_batch returns tensors after).
        decord.bridge.set_bridge("torch")
        progress = tqdm(range(len(self.instance_video_paths)), desc="Loading videos")
        videos = []
        for path in self.instance_video_paths:
            # real: decord resizes while decoding, to exactly width x height: a stretch, no crop.
            reader = decord.VideoReader(uri=path.as_posix(), width=self.width, height=self.height)
            frames = reader.get_batch(self._frame_indices(len(reader)))[: self.max_num_frames]
            frames = frames[: (frames.shape[0] - 1) // 4 * 4 + 1]  # 4k+1 frames, as the VAE needs
            frames = (frames.float() / 255.0 * 2.0 - 1.0).permute(0, 3, 1, 2)  # [F, C, H, W]
            videos.append(frames.contiguous())
            progress.update(1)
        progress.close()
        return videos


def log_validation(pipe, args, accelerator, pipeline_args, epoch, is_final_validation=False):
    logger.info(
        f"Validation (epoch {epoch}): {args.num_validation_videos} video(s) of {pipeline_args['prompt']!r}"
    )
    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(accelerator.device)
    generator = (
        None if args.seed is None else torch.Generator(device=accelerator.device).manual_seed(args.seed)
    )
    videos = [
        pipe(**pipeline_args, generator=generator, output_type="np").frames[0]
        for _ in range(args.num_validation_videos)
    ]
    del pipe
    free_memory()
    return videos


def compute_prompt_embeddings(
    tokenizer, text_encoder, prompt, max_sequence_length, device, dtype, requires_grad: bool = False
):
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    input_ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    with torch.set_grad_enabled(requires_grad):
        prompt_embeds = text_encoder(input_ids.to(device))[0]
    return prompt_embeds.to(dtype=dtype, device=device)


def prepare_rotary_positional_embeddings(
    height,
    width,
    num_frames,
    vae_scale_factor_spatial=8,
    patch_size=2,
    attention_head_dim=64,
    device=None,
    base_height=480,
    base_width=720,
):
    # real: the 1.0 kind of RoPE (linspace grid fitted into the 480x720 base), whatever the model.
    pixels_per_patch = vae_scale_factor_spatial * patch_size
    grid = (height // pixels_per_patch, width // pixels_per_patch)
    crops = get_resize_crop_region_for_grid(
        grid, base_width // pixels_per_patch, base_height // pixels_per_patch
    )
    return get_3d_rotary_pos_embed(
        embed_dim=attention_head_dim,
        crops_coords=crops,
        grid_size=grid,
        temporal_size=num_frames,
        device=device,
    )


def get_optimizer(args, params_to_optimize, use_deepspeed: bool = False):
    if use_deepspeed:
        raise NotImplementedError("the tiny trainer does not support DeepSpeed")
    # real: the learning rate comes with the parameter groups, not as an argument.
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(
        params_to_optimize,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.adam_weight_decay,
    )


def _validate(pipe, args, accelerator, epoch, is_final_validation=False):
    # real: one log_validation call per (image, prompt) pair, always at --height x --width.
    images = args.validation_images.split(args.validation_prompt_separator)
    for image, prompt in zip(images, args.validation_prompt.split(args.validation_prompt_separator)):
        pipeline_args = {
            "image": load_image(image),
            "prompt": prompt,
            "guidance_scale": args.guidance_scale,
            "use_dynamic_cfg": args.use_dynamic_cfg,
            "height": args.height,
            "width": args.width,
        }
        log_validation(
            pipe=pipe,
            args=args,
            accelerator=accelerator,
            pipeline_args=pipeline_args,
            epoch=epoch,
            is_final_validation=is_final_validation,
        )


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _checkpoints(output_dir):
    names = [name for name in os.listdir(output_dir) if name.startswith("checkpoint")]
    return sorted(names, key=lambda name: int(name.split("-")[1]))


def _save_checkpoint(accelerator, args, global_step):
    if args.checkpoints_total_limit is not None:
        # Make room for the one about to be written.
        existing = _checkpoints(args.output_dir)
        for name in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
            shutil.rmtree(os.path.join(args.output_dir, name))
    save_path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
    accelerator.save_state(save_path)
    logger.info(f"Saved state to {save_path}")


def main(args):
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            args.output_dir, logging_dir=Path(args.output_dir, args.logging_dir)
        ),
        # real: nccl is hard-coded; being accelerate's default (as is the 600 s timeout), to_kwargs()
        # drops it and CPU ranks still get gloo.
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True),
            InitProcessGroupKwargs(backend="nccl", timeout=timedelta(seconds=args.nccl_timeout)),
        ],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    device = accelerator.device

    model_path = args.pretrained_model_name_or_path
    version = {"revision": args.revision, "variant": args.variant}
    tokenizer = AutoTokenizer.from_pretrained(model_path, subfolder="tokenizer", revision=args.revision)
    text_encoder = T5EncoderModel.from_pretrained(
        model_path, subfolder="text_encoder", revision=args.revision
    )
    # real: bfloat16 when the path names a "5b" model, float16 otherwise (how they are stored).
    load_dtype = torch.bfloat16 if "5b" in model_path.lower() else torch.float16
    transformer = CogVideoXTransformer3DModel.from_pretrained(
        model_path, subfolder="transformer", torch_dtype=load_dtype, **version
    )
    vae = AutoencoderKLCogVideoX.from_pretrained(model_path, subfolder="vae", **version)
    scheduler = CogVideoXDPMScheduler.from_pretrained(model_path, subfolder="scheduler")
    if args.enable_slicing:
        vae.enable_slicing()
    if args.enable_tiling:
        vae.enable_tiling()

    weight_dtype = _DTYPES.get(accelerator.mixed_precision, torch.float32)
    for model in (text_encoder, transformer, vae):
        model.requires_grad_(False)
        model.to(device, dtype=weight_dtype)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    targets = ["to_k", "to_q", "to_v", "to_out.0"]
    transformer.add_adapter(
        LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights=True, target_modules=targets)
    )

    def unwrap_model(model):
        model = accelerator.unwrap_model(model)
        return getattr(model, "_orig_mod", model)  # torch.compile wraps the module

    # real: accelerator.save_state/load_state write and read only the LoRA, in diffusers' format.
    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            lora_layers = None
            for model in models:
                if not isinstance(model, type(unwrap_model(transformer))):
                    raise ValueError(f"unexpected save model: {model.__class__}")
                lora_layers = get_peft_model_state_dict(model)
                weights.pop()  # so that accelerate does not save the whole model too
            CogVideoXImageToVideoPipeline.save_lora_weights(output_dir, transformer_lora_layers=lora_layers)

    def load_model_hook(models, input_dir):
        transformer_ = None
        while models:
            model = models.pop()
            if not isinstance(model, type(unwrap_model(transformer))):
                raise ValueError(f"unexpected load model: {model.__class__}")
            transformer_ = model
        saved = CogVideoXImageToVideoPipeline.lora_state_dict(input_dir)
        state = {k.removeprefix("transformer."): v for k, v in saved.items() if k.startswith("transformer.")}
        set_peft_model_state_dict(
            transformer_, convert_unet_state_dict_to_peft(state), adapter_name="default"
        )
        if args.mixed_precision == "fp16":
            cast_training_params([transformer_])

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    if args.scale_lr:
        args.learning_rate *= (
            args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        )
    if args.mixed_precision == "fp16":
        cast_training_params([transformer], dtype=torch.float32)
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]
    params_to_optimize = [{"params": lora_parameters, "lr": args.learning_rate}]
    optimizer = get_optimizer(args, params_to_optimize)

    train_dataset = VideoDataset(
        instance_data_root=args.instance_data_root,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        caption_column=args.caption_column,
        video_column=args.video_column,
        height=args.height,
        width=args.width,
        fps=args.fps,
        max_num_frames=args.max_num_frames,
        skip_frames_start=args.skip_frames_start,
        skip_frames_end=args.skip_frames_end,
        cache_dir=args.cache_dir,
        id_token=args.id_token,
    )

    # real: returns the video's posterior and that of its first frame with a little noise added,
    # sigma = exp(N(-3, 0.5)), drawn once per clip here (not per step).
    def encode_video(video):
        # [F, C, H, W] -> [1, C, F, H, W]
        video = video.to(device, dtype=vae.dtype).unsqueeze(0).permute(0, 2, 1, 3, 4)
        image = video[:, :, :1].clone()
        latent_dist = vae.encode(video).latent_dist
        sigma = torch.exp(torch.normal(mean=-3.0, std=0.5, size=(1,), device=image.device)).to(image.dtype)
        noisy_image = image + torch.randn_like(image) * sigma[:, None, None, None, None]
        return latent_dist, vae.encode(noisy_image).latent_dist

    # real: prompts become embeddings [1, L, D] once, and every rank encodes every clip.
    text_length = transformer.config.max_text_seq_length
    train_dataset.instance_prompts = [
        compute_prompt_embeddings(tokenizer, text_encoder, [prompt], text_length, device, weight_dtype)
        for prompt in train_dataset.instance_prompts
    ]
    train_dataset.instance_videos = [encode_video(video) for video in train_dataset.instance_videos]

    # real: a closure over `vae` and `args`; cogvx-ext finds the VAE in its __closure__. The image
    # latents are scaled by scaling_factor even for 1.5 models, whose pipeline divides by it
    # (invert_scale_latents). Clips of different latent shapes in one batch fail at torch.cat.
    def collate_fn(examples):
        videos, images = [], []
        for example in examples:
            latent_dist, image_latent_dist = example["instance_video"]
            # [1, C, F, H, W] -> [1, F, C, H, W]
            video_latents = (latent_dist.sample() * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
            image_latents = (image_latent_dist.sample() * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
            # The first-frame latent, then zeros for the remaining latent frames.
            num_frames = video_latents.shape[1]
            padding = image_latents.new_zeros(1, num_frames - 1, *video_latents.shape[2:])
            image_latents = torch.cat([image_latents, padding], dim=1)
            if random.random() < args.noised_image_dropout:
                image_latents = torch.zeros_like(image_latents)
            videos.append(video_latents)
            images.append(image_latents)
        videos = torch.cat(videos).to(memory_format=torch.contiguous_format).float()
        images = torch.cat(images).to(memory_format=torch.contiguous_format).float()
        prompts = torch.cat([example["instance_prompt"] for example in examples])
        return {"videos": (videos, images), "prompts": prompts}

    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
    )

    # real: len(train_dataloader) drives the step count, before and after accelerator.prepare.
    overrode_max_train_steps = args.max_train_steps is None
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
        num_cycles=args.lr_num_cycles,
        power=args.lr_power,
    )
    transformer, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, train_dataloader, lr_scheduler
    )
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_name or "cogvideox-i2v-lora", config=vars(args))

    global_step = first_epoch = 0
    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint == "latest":
            found = _checkpoints(args.output_dir)
            name = found[-1] if found else None
        else:
            name = os.path.basename(args.resume_from_checkpoint)
        if name is None:
            accelerator.print(
                f"No checkpoint for '{args.resume_from_checkpoint}'. Starting a new training run."
            )
            args.resume_from_checkpoint = None
        else:
            accelerator.print(f"Resuming from checkpoint {name}")
            accelerator.load_state(os.path.join(args.output_dir, name))
            global_step = int(name.split("-")[1])
            # real: resumes at the start of the epoch; batches already seen are seen again.
            first_epoch = global_step // num_update_steps_per_epoch

    progress_bar = tqdm(
        range(args.max_train_steps),
        initial=global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    vae_scale_factor_spatial = 2 ** (len(vae.config.block_out_channels) - 1)
    model_config = transformer.module.config if hasattr(transformer, "module") else transformer.config

    epoch = first_epoch
    for epoch in range(first_epoch, args.num_train_epochs):
        transformer.train()
        for batch in train_dataloader:
            with accelerator.accumulate([transformer]):
                # [B, F, C, H, W] each
                video_latents, image_latents = (t.to(dtype=weight_dtype) for t in batch["videos"])
                prompt_embeds = batch["prompts"]
                batch_size, num_frames = video_latents.shape[:2]
                num_timesteps = scheduler.config.num_train_timesteps
                timesteps = torch.randint(0, num_timesteps, (batch_size,), device=video_latents.device).long()
                noise = torch.randn_like(video_latents)
                noisy_video_latents = scheduler.add_noise(video_latents, noise, timesteps)
                # The transformer sees noisy video and image latents stacked on channels.
                noisy_model_input = torch.cat([noisy_video_latents, image_latents], dim=2)
                # real: RoPE from --height/--width, not from the batch: a batch of another size fails
                # in apply_rotary_emb, or (transposed, same token count) trains silently wrong.
                image_rotary_emb = (
                    prepare_rotary_positional_embeddings(
                        height=args.height,
                        width=args.width,
                        num_frames=num_frames,
                        vae_scale_factor_spatial=vae_scale_factor_spatial,
                        patch_size=model_config.patch_size,
                        attention_head_dim=model_config.attention_head_dim,
                        device=device,
                    )
                    if model_config.use_rotary_positional_embeddings
                    else None
                )
                model_output = transformer(
                    hidden_states=noisy_model_input,
                    encoder_hidden_states=prompt_embeds,
                    timestep=timesteps,
                    image_rotary_emb=image_rotary_emb,
                    return_dict=False,
                )[0]
                # v-prediction turned into a clean-sample estimate, weighted by 1 / (1 - alpha_bar).
                model_pred = scheduler.get_velocity(model_output, noisy_video_latents, timesteps)
                weights = 1 / (1 - scheduler.alphas_cumprod[timesteps])
                weights = weights.reshape(-1, *[1] * (model_pred.ndim - 1))
                loss = (
                    (weights * (model_pred - video_latents) ** 2).reshape(batch_size, -1).mean(dim=1).mean()
                )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(transformer.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                lr_scheduler.step()

            if accelerator.sync_gradients:
                progress_bar.update(1)
                global_step += 1
                # real: every rank saves under DeepSpeed (each writes its own shard of the engine's state).
                saves = (
                    accelerator.is_main_process or accelerator.distributed_type == DistributedType.DEEPSPEED
                )
                if saves and global_step % args.checkpointing_steps == 0:
                    _save_checkpoint(accelerator, args, global_step)

            # real: logged every loop iteration (every micro-batch); cogvx_step_end fires from here.
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            progress_bar.set_postfix(**logs)
            accelerator.log(logs, step=global_step)
            if global_step >= args.max_train_steps:
                break

        validate = args.validation_prompt is not None and (epoch + 1) % args.validation_epochs == 0
        if accelerator.is_main_process and validate:
            pipe = CogVideoXImageToVideoPipeline.from_pretrained(
                model_path,
                transformer=unwrap_model(transformer),
                scheduler=scheduler,
                torch_dtype=weight_dtype,
                **version,
            )
            _validate(pipe, args, accelerator, epoch)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        transformer = unwrap_model(transformer).to(_DTYPES.get(args.mixed_precision, torch.float32))
        lora_layers = get_peft_model_state_dict(transformer)
        CogVideoXImageToVideoPipeline.save_lora_weights(
            save_directory=args.output_dir, transformer_lora_layers=lora_layers
        )
        del transformer
        free_memory()

        # real: a final test loads a fresh pipeline with the saved LoRA and runs the validation
        # prompts, if there are any.
        pipe = CogVideoXImageToVideoPipeline.from_pretrained(model_path, torch_dtype=weight_dtype, **version)
        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
        if args.enable_slicing:
            pipe.vae.enable_slicing()
        if args.enable_tiling:
            pipe.vae.enable_tiling()
        pipe.load_lora_weights(args.output_dir, adapter_name="cogvideox-i2v-lora")
        pipe.set_adapters(["cogvideox-i2v-lora"], [args.lora_alpha / args.rank])
        if args.validation_prompt and args.num_validation_videos > 0:
            _validate(pipe, args, accelerator, epoch, is_final_validation=True)

    accelerator.end_training()


if __name__ == "__main__":
    args = get_args()
    main(args)
