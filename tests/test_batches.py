"""east.training.batches: length-grouped batches in a shuffled order, not transformers' long-to-short cycles."""

import random

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from east.training.batches import ShuffledLengthGroupedSampler, shuffled_length_grouped_indices


def batches_of(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def descending_share(indices, lengths, size):
    """Share of consecutive batches whose longest row is shorter than the previous batch's: about 1 when batches
    come sorted longest first, about 1/2 in a random order."""
    tops = [max(lengths[i] for i in b) for b in batches_of(indices, size)]
    return sum(b < a for a, b in zip(tops, tops[1:])) / (len(tops) - 1)


def test_batches_are_length_grouped_but_not_in_long_to_short_cycles():
    rng = random.Random(0)
    lengths = [rng.randrange(10, 400) for _ in range(2000)]
    size = 8
    ours = shuffled_length_grouped_indices(lengths, size, torch.Generator().manual_seed(0))
    theirs = get_length_grouped_indices(lengths, size, generator=torch.Generator().manual_seed(0))
    assert sorted(ours) == list(range(2000))
    assert descending_share(theirs, lengths, size) > 0.9  # the cycle this module exists to avoid
    assert 0.35 < descending_share(ours, lengths, size) < 0.65
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches_of(ours, size)]
    assert sum(spread) / len(spread) < 20  # rows of a batch are close in length (random batches: ~300)


def test_a_ragged_last_batch_stays_last_and_every_row_comes_once():
    lengths = list(range(1, 103))  # 102 rows, batches of 8: 12 full batches and one of 6
    for seed in range(5):
        indices = shuffled_length_grouped_indices(lengths, 8, torch.Generator().manual_seed(seed))
        assert sorted(indices) == list(range(102))
        # 102 // (8 * 4) = 3 batches per mega-batch: four of 24 rows in the random order, then a ragged one of 6
        order = torch.randperm(102, generator=torch.Generator().manual_seed(seed)).tolist()
        groups = [set(order[i:i + 24]) for i in range(0, 102, 24)]
        *full, last = batches_of(indices, 8)
        assert set(last) == groups[-1]
        assert all(any(set(b) <= g for g in groups[:-1]) for b in full)  # no batch straddles two mega-batches


def test_the_sampler_draws_anew_each_epoch_and_repeats_with_its_seed():
    lengths = [3, 9, 4, 8, 1, 7, 2, 6] * 8
    a = ShuffledLengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(1))
    b = ShuffledLengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(1))
    first, second = list(a), list(a)
    assert first == list(b) and len(a) == 64
    assert first != second and sorted(first) == sorted(second) == list(range(64))
