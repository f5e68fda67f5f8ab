"""Length-grouped training batches in a random order: rows of similar length share a batch (less padding), and the
batches of an epoch come shuffled.

transformers 5.x's `LengthGroupedSampler` (`train_sampling_strategy="group_by_length"`) forms the same groups but
yields each mega-batch of up to 50 batches sorted longest first, so training cycles from long rows to short ones. In
the backbone's warm-up (lr 2e-3 from random weights) that cycle took greedy accuracy from 48.9% to 3.1%
(docs/testbed.md, 2026-12-07). Here the groups are formed the same way and then whole batches are shuffled; a
ragged last batch stays last, because the DataLoader cuts the flat index list into batches by position.

Used through `WeightedTrainerMixin._get_train_sampler` when a run sets `train.group_by_length: true`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MEGA_BATCH_MULT = 50  # transformers' default: rows are sorted by length within 50 batches' worth of a random order


def shuffled_length_grouped_indices(lengths: Sequence[int], batch_size: int,
                                    generator: torch.Generator | None = None) -> list[int]:
    """A permutation of range(len(lengths)) whose consecutive `batch_size` slices hold rows of similar length, the
    slices themselves in a random order (the last, possibly short, slice at the end)."""
    n = len(lengths)
    mult = max(1, min(n // (batch_size * 4), MEGA_BATCH_MULT))  # at least 4 mega-batches, as transformers does
    order = torch.randperm(n, generator=generator).tolist()
    mega = mult * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        rows = sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    ragged = batches.pop() if batches and len(batches[-1]) < batch_size else None
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if ragged is not None:
        shuffled.append(ragged)
    return [i for batch in shuffled for i in batch]


class ShuffledLengthGroupedSampler(Sampler[int]):
    """Sampler over row indices for `shuffled_length_grouped_indices`; a new draw each epoch (from `generator`, or
    torch's global generator, which the Trainer seeds, as transformers' own length-grouped sampler does)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(shuffled_length_grouped_indices(self.lengths, self.batch_size, self.generator))
