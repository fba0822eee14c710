"""Exercises for lesson 5, dataset_loader_demo.py: a Dataset, a collate function and a batch sampler.

Replace each `raise NotImplementedError` with your code, then check your answers:
    make exercises                                          (a table of all exercises)
    python -m pytest exercises/test_dataset_loader_demo.py         (this lesson, with messages)
    python -m pytest exercises -k BucketBatchSampler        (one exercise)
Reference solutions: exercises/solutions/dataset_loader_demo.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, Sampler


class CharDataset(Dataset):
    """Task: a map-style Dataset of next-character prediction pairs from a text: item i is the tokens of
    text[i : i + seq_len] and, as targets, the tokens of text[i + 1 : i + seq_len + 1].

    Section: "Text: character-level tokens" in dataset_loader_demo.py (lesson 5).
    Signature: CharDataset(text, seq_len); len(dataset); dataset[i] -> (x, y); attribute vocab (list of str)
    Shapes: x (seq_len,) int64, y (seq_len,) int64. The vocabulary is sorted(set(text)) and a character's
    token is its index there. There are len(text) − seq_len items. A negative i counts from the end (like a
    list); i ≥ len(dataset) or i < −len(dataset) raises IndexError. Raise ValueError naming seq_len unless
    1 ≤ seq_len < len(text).
    Hint: the target is the input one character later; the last target must end at the last character.
    """

    def __init__(self, text: str, seq_len: int):
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def pad_and_sort_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Task: a DataLoader collate_fn for sequences of different lengths: pad them with zeros to the longest,
    and order the batch by length, longest first (as pack_padded_sequence(..., enforce_sorted=True) wants).

    Section: "Collation: padding variable-length sequences" in dataset_loader_demo.py (lesson 5).
    Signature: pad_and_sort_collate(batch) -> (padded, lengths, labels)
    Shapes: batch is a list of B pairs (sequence (T_i,) float, label () int64) -> padded (B, T_max) with the
    dtype of the sequences, lengths (B,) int64 (the true lengths, descending), labels (B,) int64. Sequences of
    equal length keep their order in the batch (a stable sort).
    Hint: sort by length, longest first, and move every part of an item together; padding goes at the end.
    """
    raise NotImplementedError


class BucketBatchSampler(Sampler):
    """Task: a batch sampler that groups sequences of similar length, to waste little padding: sort the indices
    by length, cut them into consecutive batches of batch_size (the last one may be smaller), and yield the
    batches in a random order drawn from `generator`, a new order on each pass.

    Section: "Sampling: balancing classes, sharding for distributed training" in dataset_loader_demo.py (lesson 5).
    Signature: BucketBatchSampler(lengths, batch_size, generator=None); iter(sampler) yields lists of int
    indices; len(sampler) is the number of batches. Use it as DataLoader(dataset, batch_sampler=sampler).
    Shapes: lengths is a sequence of n ints -> ceil(n / batch_size) batches; every index 0 … n−1 appears
    exactly once per pass.
    With generator=None, make your own generator, seeded from torch's global RNG (as RandomSampler does).
    Rule: draw only from the generator you were given.
    Hint: batch neighbours in length order, then shuffle which batch comes when, with the generator given.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None):
        raise NotImplementedError

    def __iter__(self):
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError
