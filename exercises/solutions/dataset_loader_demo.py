"""Reference solutions for exercises/dataset_loader_demo.py (the docstrings there state each task)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler


class CharDataset(Dataset):
    """The text encoded once; items are two slices of it."""

    def __init__(self, text: str, seq_len: int):
        if not 1 <= seq_len < len(text):
            raise ValueError(f"seq_len={seq_len} must be between 1 and len(text) - 1 = {len(text) - 1}")
        self.vocab = sorted(set(text))
        token_of = {ch: i for i, ch in enumerate(self.vocab)}
        self.tokens = torch.tensor([token_of[ch] for ch in text], dtype=torch.long)  # (len(text),)
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.tokens) - self.seq_len  # the last target ends at the last character

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of length {len(self)}")
        i = index % len(self)
        return self.tokens[i:i + self.seq_len], self.tokens[i + 1:i + self.seq_len + 1]


def pad_and_sort_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stable sort by length (descending), then pad."""
    order = sorted(range(len(batch)), key=lambda i: -len(batch[i][0]))  # sorted() is stable
    sequences = [batch[i][0] for i in order]
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # (B,)
    labels = torch.stack([torch.as_tensor(batch[i][1]) for i in order])  # (B,), same order as the sequences
    return pad_sequence(sequences, batch_first=True, padding_value=0.0), lengths, labels


class BucketBatchSampler(Sampler):
    """Batches of neighbours in length order, visited in a random order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if generator is None:  # like RandomSampler: one seed from the global RNG, then a private generator
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        self.generator = generator

    def __iter__(self):
        for i in torch.randperm(len(self.batches), generator=self.generator).tolist():
            yield list(self.batches[i])

    def __len__(self) -> int:
        return len(self.batches)
