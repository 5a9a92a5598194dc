"""Keeps every prompt's embedding in memory: the text-to-video script encodes the prompts of each
batch again at every step. Once every dataset prompt is answered without the text encoder, the
core moves the text encoder to the CPU."""

import torch

from cogvx_ext.api import hookimpl


class PromptMemory:
    def __init__(self):
        self.memory = {}

    @hookimpl(tryfirst=True)
    def cogvx_prompt_embeddings(self, prompts, device, dtype):
        if all(p in self.memory for p in prompts):
            return torch.cat([self.memory[p] for p in prompts]).to(device, dtype)

    @hookimpl(wrapper=True, specname="cogvx_prompt_embeddings")
    def keep(self, prompts, cached_only):
        embeddings = yield
        if embeddings is not None and not cached_only:
            self.memory.update({p: e[None].cpu() for p, e in zip(prompts, embeddings)})
        return embeddings
