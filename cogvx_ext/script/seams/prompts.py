"""The script's ``compute_prompt_embeddings``: ``cogvx_prompt_embeddings``, and the text encoder off the device."""

from __future__ import annotations

import functools
import sys

import torch

from cogvx_ext.plugin.hookspecs import hookimpl


class ScriptPromptEmbeddings:
    """The script's own ``compute_prompt_embeddings``, as the trylast ``cogvx_prompt_embeddings``."""

    def __init__(self, script_function):
        self.script_function = script_function

    @hookimpl(trylast=True)
    def cogvx_prompt_embeddings(
        self, prompts, tokenizer, text_encoder, max_sequence_length, device, dtype, cached_only
    ):
        if cached_only:
            return None
        # The text encoder may have been moved to the CPU (everything was cached): run it where it is.
        where = next(text_encoder.parameters()).device
        embeddings = self.script_function(
            tokenizer, text_encoder, prompts, max_sequence_length, where, dtype, requires_grad=False
        )
        return embeddings.to(device)


def _prompt_embeddings_seam(run, script_function):
    @functools.wraps(script_function)
    def compute_prompt_embeddings(
        tokenizer, text_encoder, prompt, max_sequence_length, device, dtype, requires_grad=False
    ):
        if requires_grad:  # gradients flow into the text encoder: nothing to reuse
            return script_function(
                tokenizer, text_encoder, prompt, max_sequence_length, device, dtype, requires_grad=True
            )
        ask = functools.partial(
            run.hook.cogvx_prompt_embeddings,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            max_sequence_length=max_sequence_length,
            dtype=dtype,
            run=run.context,
        )
        if not run.prompts_prepared:
            run.prompts_prepared = True
            _prepare_dataset_prompts(run, ask, text_encoder, device)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return ask(prompts=prompts, device=device, cached_only=False)

    return compute_prompt_embeddings


def _prepare_dataset_prompts(run, ask, text_encoder, device) -> None:
    """Embed every dataset prompt once (a plugin may keep them), then take the text encoder off the
    accelerator when the plugins answer every prompt without it."""
    from tqdm.auto import tqdm

    dataset = run.dataset
    if dataset is None:  # the script's own VideoDataset: its prompts are not known here
        return
    prefix = "" if run.kind == "i2v" else dataset.id_token  # T2V adds the id token per item
    prompts = sorted({prefix + p for p in dataset.instance_prompts if isinstance(p, str)})
    chunk = max(1, int(getattr(run.args, "train_batch_size", 1) or 1))
    with torch.no_grad():
        for i in range(0, len(prompts), chunk):
            ask(prompts=prompts[i : i + chunk], device=device, cached_only=False)
        # Asked for on the CPU, in chunks: the check must not hold every embedding on the device.
        answered = all(
            ask(prompts=prompts[i : i + chunk], device=torch.device("cpu"), cached_only=True) is not None
            for i in range(0, len(prompts), chunk)
        )
    if answered and prompts:
        text_encoder.to("cpu")
        run.text_encoder_offloaded = text_encoder
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if run.accelerator is None or run.accelerator.is_local_main_process:
            tqdm.write(
                f"cogvx-ext: all {len(prompts)} prompt embeddings are at hand; the text encoder stays on the CPU",
                file=sys.stderr,
            )
