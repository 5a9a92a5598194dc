"""latent_cache: launch in seconds. VAE posteriors and prompt embeddings kept on disk under content keys.

* One entry per sample (clip, bucket, frame selection): the posterior's parameters (mean and
  log-variance, so every step still draws a fresh sample as the script does), as safetensors,
  never pickle. I2V entries hold the pair the I2V script makes: the video and the noised first
  frame (its noise drawn once, when the entry was made).
* The key is a hash of everything that decides the numbers (``clip_fields`` and ``entry_key``): the
  file's contents (size, hashes of its first and last MiB; not its path or modification time, so
  a copy of the data on another node, or restored from a backup, reuses the entries), the target (size, crop box, frame indices,
  tags), ``--fps``, the script kind, the VAE's identity (config, a fingerprint of its weights,
  dtype, every setting kept on the VAE object: slicing, tiling, tile sizes and overlaps, frames
  encoded at once; diffusers version) and ``FORMAT_VERSION``. Nothing about
  the process (rank, process count, device) is in it, so an entry written by any launch layout
  is read by any other. Any change makes a new entry; prune drops the old ones.
* Writes are atomic (a temporary file in the entry's folder, then ``os.replace``): a run killed
  at any moment leaves whole entries and temporary files, which nothing reads. Two processes
  writing the same key (``cogvx-ext cache fill`` beside a training run) each replace the file
  with a whole entry; the last one stays.
* Every entry is checked when read: its recorded key, tensor names, shapes (the latent shape of
  the target), dtype and finite values. A bad entry is reported with its clip and encoded again.
* Clip headers (``cogvx_probe``'s answers): JSON under ``DIR/probes``, keyed by the clip's
  contents as above, so a warm launch demuxes no clip (it reads two MiB of each, which the
  latent keys need anyway), and a file replaced by another of the same size and time is probed
  again instead of being taken for the old one.
* Prompt embeddings (``cogvx_prompt_embeddings``): one entry per
  prompt under ``DIR/prompts``, keyed by the text, the text encoder's identity, the tokenizer,
  the sequence length and dtype; kept in memory for the run, so a step costs no encoder call.

Layout: ``DIR/<first two hex digits>/<key>.safetensors`` and ``DIR/prompts/<xx>/<key>.safetensors``.
``cogvx-ext cache fill`` fills the cache ahead of training, ``cogvx-ext cache prune`` removes
entries the dataset no longer reaches (``cogvx_ext.cli.cache``).
"""

from .plugin import LatentCache
from .prune import prune

__all__ = ["LatentCache", "prune"]
