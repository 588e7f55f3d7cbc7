"""Length-bucketed sampler: coverage, DDP sharding, similar lengths, exact resume."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ser_model.data import DataSplitError, LengthBucketSampler, shard_for_eval


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(8000, 80000, size=n)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300), batch_size=st.integers(1, 20), seed=st.integers(0, 1000), epoch=st.integers(0, 5)
)
def test_every_index_exactly_once_per_epoch(n, batch_size, seed, epoch):
    sampler = LengthBucketSampler(_lengths(n, seed), batch_size, seed=seed, pool_batches=3)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))
    assert len(batches) == len(sampler)
    assert all(1 <= len(batch) <= batch_size for batch in batches)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 8), world=st.integers(2, 4), seed=st.integers(0, 100))
def test_ddp_shards_cover_everything_and_are_disjoint_up_to_padding(n, batch_size, world, seed):
    lengths = _lengths(n, seed)
    shards = [
        list(LengthBucketSampler(lengths, batch_size, seed=seed, rank=r, world_size=world))
        for r in range(world)
    ]
    assert len({len(s) for s in shards}) == 1, "every rank must run the same number of steps"
    for step in zip(*shards):
        assert len({len(b) for b in step}) == 1, "ranks must hold equal batch sizes at each step"
    flat = [i for shard in shards for batch in shard for i in batch]
    assert set(flat) == set(range(n))
    pad = -n % world
    assert len(flat) == n + pad
    assert len(flat) - len(set(flat)) == pad
    if n % world == 0:
        per_rank = [{i for batch in shard for i in batch} for shard in shards]
        for a in range(world):
            for b in range(a + 1, world):
                assert not per_rank[a] & per_rank[b]


def test_batches_group_similar_lengths_and_reshuffle_per_epoch():
    lengths = _lengths(400)
    sampler = LengthBucketSampler(lengths, 16, seed=3)
    batches = list(sampler)
    within = np.mean([np.ptp(lengths[b]) for b in batches])
    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(lengths)), len(batches))
    across = np.mean([np.ptp(lengths[b]) for b in random_batches])
    assert within < 0.2 * across
    sampler.set_epoch(1)
    assert list(sampler) != batches
    again = LengthBucketSampler(lengths, 16, seed=3)
    assert list(again) == batches


def test_state_dict_resume_continues_the_same_order():
    lengths = _lengths(100)
    reference = LengthBucketSampler(lengths, 8, seed=5)
    reference.set_epoch(2)
    full = list(reference)
    interrupted = LengthBucketSampler(lengths, 8, seed=5)
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(4)]
    state = interrupted.state_dict()
    assert state["epoch"] == 2 and state["position"] == 4
    resumed = LengthBucketSampler(lengths, 8, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert head + list(resumed) == full
    resumed.set_epoch(3)
    assert resumed.state_dict()["position"] == 0
    with pytest.raises(ValueError, match="seed"):
        LengthBucketSampler(lengths, 8, seed=6).load_state_dict(state)


def test_eval_shards_partition_the_indices():
    lengths = _lengths(37)
    shards = [shard_for_eval(lengths, 4, rank=r, world_size=3) for r in range(3)]
    flat = [i for shard in shards for batch in shard for i in batch]
    assert sorted(flat) == list(range(37))


def test_empty_split_is_refused_with_a_message():
    with pytest.raises(DataSplitError, match="empty"):
        LengthBucketSampler([], 4)
