"""aspect_bucket's BucketBatchSampler: shapes, shuffles, lengths, ranks, resuming, token budgets."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader
from torch.utils.data import DataLoader

from cogvx_ext.model.facts import ModelInfo
from cogvx_ext.testing import tiny_transformer_config
from cogvx_ext_plugins.aspect_bucket.sampler import TEXT_TOKENS, BucketBatchSampler, batch_sizes_for_budget

LANDSCAPE, PORTRAIT, SQUARE, SHORT = (13, 72, 128), (13, 128, 72), (13, 96, 96), (9, 72, 128)


def dataset_keys(counts: dict, seed: int = 0) -> list:
    """Shape keys in a shuffled dataset order, like clips listed in no particular order."""
    keys = [key for key, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(keys)
    return keys


KEYS = dataset_keys({LANDSCAPE: 11, PORTRAIT: 6, SQUARE: 3, SHORT: 1})


def shapes_of(batch, keys):
    return {keys[i] for i in batch}


def test_every_batch_has_one_shape_and_its_bucket_size():
    sizes = {LANDSCAPE: 4, PORTRAIT: 2, SQUARE: 2, SHORT: 3}
    sampler = BucketBatchSampler(KEYS, sizes, seed=3)
    for _ in range(3):
        for batch in sampler:
            (shape,) = shapes_of(batch, KEYS)
            assert len(batch) == sizes[shape]


def test_fill_sees_every_sample_every_epoch():
    sampler = BucketBatchSampler(KEYS, 4, seed=0)
    for _ in range(4):
        seen = Counter(i for batch in sampler for i in batch)
        assert set(seen) == set(range(len(KEYS)))
    # The one-clip bucket fills its batch with itself.
    lonely = KEYS.index(SHORT)
    assert [lonely] * 4 in sampler.batches_for_epoch(0)


def test_order_changes_every_epoch_and_is_reproducible():
    sampler = BucketBatchSampler(KEYS, 2, seed=7)
    epochs = [list(sampler) for _ in range(4)]
    assert all(a != b for i, a in enumerate(epochs) for b in epochs[i + 1 :])
    assert epochs == [sampler.batches_for_epoch(e) for e in range(4)]
    assert BucketBatchSampler(KEYS, 2, seed=8).batches_for_epoch(0) != epochs[0]


def test_two_ranks_build_identical_sequences_without_talking():
    # Two processes each make their own sampler from the same samples and seed.
    rank0, rank1 = (BucketBatchSampler(KEYS, 2, seed=5, num_replicas=2) for _ in range(2))
    assert [list(rank0) for _ in range(5)] == [list(rank1) for _ in range(5)]


@pytest.mark.parametrize("trial", range(40))
def test_len_is_exact_and_a_multiple_of_the_processes(trial):
    rng = random.Random(trial)
    counts = {
        (rng.randint(1, 13), rng.randint(8, 20) * 4, rng.randint(8, 20) * 4): rng.randint(1, 12)
        for _ in range(5)
    }
    keys = dataset_keys(counts, trial)
    sizes = {key: rng.randint(1, 5) for key in counts}
    replicas = rng.randint(1, 4)
    remainder = rng.choice(["fill", "drop"]) if replicas > 1 else rng.choice(["fill", "drop", "partial"])
    sampler = BucketBatchSampler(keys, sizes, seed=trial, num_replicas=replicas, remainder=remainder)
    assert len(sampler) % replicas == 0
    for _ in range(3):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            (shape,) = shapes_of(batch, keys)
            if remainder != "partial":
                assert len(batch) == sizes[shape]
    assert len(
        BucketBatchSampler(keys, sizes, seed=trial + 1, num_replicas=replicas, remainder=remainder)
    ) == len(sampler)


def test_drop_never_repeats_and_loses_different_clips_each_epoch():
    sampler = BucketBatchSampler(KEYS, 4, seed=1, remainder="drop")
    # 11 -> 2 batches, 6 -> 1, 3 -> 0, 1 -> 0.
    assert len(sampler) == 3
    left_out = []
    for _ in range(4):
        used = [i for batch in sampler for i in batch]
        assert len(used) == len(set(used)) == 12
        left_out.append(frozenset(range(len(KEYS))) - set(used))
    assert len(set(left_out)) > 1


def test_partial_keeps_short_batches_on_one_process_only():
    sampler = BucketBatchSampler(KEYS, 4, remainder="partial")
    sizes = sorted(len(b) for b in sampler)
    assert sizes == [1, 2, 3, 3, 4, 4, 4]  # 11 = 4+4+3, 6 = 4+2, 3, 1
    with pytest.raises(ValueError, match="partial' needs a single process"):
        BucketBatchSampler(KEYS, 4, num_replicas=2, remainder="partial")


def test_no_batch_size_attribute_for_accelerate():
    # accelerate's BatchSamplerShard would treat batches of another size as incomplete.
    assert not hasattr(BucketBatchSampler(KEYS, 2), "batch_size")


@pytest.mark.parametrize("replicas", [2, 3])
def test_accelerate_shards_whole_batches_without_padding(replicas):
    sampler = BucketBatchSampler(KEYS, 2, seed=4, num_replicas=replicas)
    expected = sampler.batches_for_epoch(0)
    shards = [
        list(BatchSamplerShard(BucketBatchSampler(KEYS, 2, seed=4, num_replicas=replicas), replicas, rank))
        for rank in range(replicas)
    ]
    for rank, shard in enumerate(shards):
        assert len(shard) == len(sampler) // replicas
        assert shard == expected[rank::replicas]
        assert all(len(shapes_of(batch, KEYS)) == 1 for batch in shard)


def test_through_prepare_data_loader_for_two_processes():
    dataset = list(range(len(KEYS)))
    ranks = []
    for rank in range(2):
        loader = DataLoader(
            dataset, batch_sampler=BucketBatchSampler(KEYS, 3, seed=2, num_replicas=2), collate_fn=list
        )
        prepared = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        assert len(prepared) == len(loader) // 2
        ranks.append([[list(b) for b in prepared] for _ in range(2)])
    reference = BucketBatchSampler(KEYS, 3, seed=2, num_replicas=2)
    for epoch in range(2):
        batches = reference.batches_for_epoch(epoch)
        assert ranks[0][epoch] == batches[0::2] and ranks[1][epoch] == batches[1::2]


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("consumed", [0, 1, 4, 5, 6, 13])
def test_state_dict_resumes_at_the_exact_batch(replicas, consumed):
    sampler = BucketBatchSampler(KEYS, 2, seed=9, num_replicas=replicas)
    per_process = len(sampler) // replicas
    state = sampler.state_dict(consumed)
    assert state["epoch"] == consumed // per_process
    assert state["position"] == consumed % per_process * replicas
    resumed = BucketBatchSampler(KEYS, 2, seed=9, num_replicas=replicas)
    resumed.load_state_dict(state)
    assert resumed.epoch == state["epoch"]
    # The flat order of all ranks' batches, with resuming, is the uninterrupted one.
    uninterrupted = [b for e in range(3) for b in sampler.batches_for_epoch(e)]
    after = [b for _ in range(3 - state["epoch"]) for b in resumed]
    assert after == uninterrupted[consumed * replicas :]


def test_resume_through_a_single_process_accelerate_loader():
    # With one process accelerate calls set_epoch(its own counter, 0 after a restart) on a batch
    # sampler that has one; this one must keep the epoch it was loaded with.
    sampler = BucketBatchSampler(KEYS, 2, seed=11)
    consumed = len(sampler) + 3  # epoch 1, batch 3
    resumed = BucketBatchSampler(KEYS, 2, seed=11)
    resumed.load_state_dict(sampler.state_dict(consumed))
    loader = DataLoader(list(range(len(KEYS))), batch_sampler=resumed, collate_fn=list)
    prepared = prepare_data_loader(loader, num_processes=1, process_index=0, put_on_device=False)
    assert [list(b) for b in prepared] == sampler.batches_for_epoch(1)[3:]
    assert [list(b) for b in prepared] == sampler.batches_for_epoch(2)


def test_loading_a_state_from_other_data_warns_and_goes_on(caplog):
    state = BucketBatchSampler(KEYS, 2, seed=1).state_dict(4)
    other = BucketBatchSampler(KEYS[:-1], 2, seed=1)
    with caplog.at_level(logging.WARNING, logger="cogvx_ext.aspect_bucket"):
        other.load_state_dict(state)
    assert "differ from the checkpoint" in caplog.text
    assert len(list(other)) == len(other) - 4


def test_state_is_json_ready():
    import json

    state = BucketBatchSampler(KEYS, 2, num_replicas=2).state_dict(3)
    assert json.loads(json.dumps(state)) == state


def test_token_budget_gives_bigger_batches_to_smaller_shapes():
    model = ModelInfo.from_config(tiny_transformer_config("5b"))
    shapes = [(13, 72, 128), (13, 36, 64), (5, 36, 64), (13, 144, 256)]
    tokens = {s: model.tokens(s) + TEXT_TOKENS for s in shapes}
    budget = 2 * tokens[(13, 72, 128)]
    sizes = batch_sizes_for_budget(shapes, budget, model)
    assert sizes[(13, 72, 128)] == 2
    assert sizes[(13, 36, 64)] == budget // tokens[(13, 36, 64)] > 2
    assert sizes[(5, 36, 64)] > sizes[(13, 36, 64)]
    assert sizes[(13, 144, 256)] == 1  # over the budget alone: still trains, one at a time
    assert all(size * tokens[s] <= budget or size == 1 for s, size in sizes.items())
    assert batch_sizes_for_budget(shapes, budget, model, max_batch=4)[(5, 36, 64)] == 4
    with pytest.raises(ValueError, match="positive"):
        batch_sizes_for_budget(shapes, 0, model)


def test_bad_arguments():
    with pytest.raises(ValueError, match="remainder must be one of fill, drop, partial"):
        BucketBatchSampler(KEYS, 2, remainder="pad")
    with pytest.raises(ValueError, match="at least 1"):
        BucketBatchSampler(KEYS, 0)
    with pytest.raises(ValueError, match="num_replicas"):
        BucketBatchSampler(KEYS, 2, num_replicas=0)
