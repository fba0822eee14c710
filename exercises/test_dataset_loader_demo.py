"""Checks for exercises/dataset_loader_demo.py, against plain Python, NumPy and torch.utils.data."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, TensorDataset

from exercises.checks import broken_rule, check, check_close, check_equal, check_raises_value_error

LESSON = "dataset_loader_demo"
TEXT = "the café in 東京 is the cafe"  # repeated and non-ASCII characters: one token per code point


def test_CharDataset(answer):
    seq_len = 4
    dataset = answer(TEXT, seq_len)
    vocab = sorted(set(TEXT))
    tokens = [vocab.index(ch) for ch in TEXT]  # the reference encoding, straight from the definition
    check_equal(list(dataset.vocab), vocab, what="CharDataset(text, 4).vocab",
                looks_like={"the characters in the order they first appear, not sorted": list(dict.fromkeys(TEXT))},
                hint="The vocabulary is sorted(set(text)): sorted, so the tokens do not depend on the text's order.")
    check_equal(len(dataset), len(TEXT) - seq_len, looks_like={
        "one item too many: the last item's target would need a character past the end": len(TEXT) - seq_len + 1},
                what=f"len(CharDataset(text of {len(TEXT)} characters, "
                f"seq_len=4))", hint="An item needs seq_len + 1 characters (its input and the target one later): "
                                     "which is the last start that still has them?")
    for i in range(len(TEXT) - seq_len):
        x, y = dataset[i]
        what = f"CharDataset(text, 4)[{i}] for text = {TEXT!r}"
        check_close(x, torch.tensor(tokens[i:i + seq_len]), what=what + ", the input x", rtol=0, atol=0,
                    hint="x holds the tokens of text[i : i + seq_len], as int64.")
        check_close(y, torch.tensor(tokens[i + 1:i + seq_len + 1]), what=what + ", the target y", rtol=0, atol=0,
                    hint="y is x shifted by one character: the tokens of text[i + 1 : i + seq_len + 1].")
    check_close(dataset[-1][1], torch.tensor(tokens[-seq_len:]), what="CharDataset(text, 4)[-1], the target y",
                rtol=0, atol=0, hint="A negative index counts from the end: dataset[-1] is dataset[len(dataset) - 1].")
    try:
        dataset[len(TEXT) - seq_len]
    except IndexError:
        pass
    else:
        check(False, f"CharDataset(text, 4)[{len(TEXT) - seq_len}] should raise IndexError (one past the end).",
              expected="IndexError", got="an item", hint="Check the index against len(self) and raise IndexError.")
    x_batch, y_batch = next(iter(DataLoader(dataset, batch_size=3)))
    check_equal(tuple(x_batch.shape), (3, seq_len), what="the shape of a DataLoader batch of 3 items",
                hint="Each item is a (seq_len,) tensor; the default collate stacks them.")
    check_raises_value_error(lambda: answer("abc", 3), what="CharDataset('abc', seq_len=3)", argument="seq_len",
                             hint="seq_len must be between 1 and len(text) − 1: raise ValueError naming seq_len.")


def test_pad_and_sort_collate(answer):
    lengths = [3, 5, 2, 5, 1]
    gen = torch.Generator().manual_seed(0)
    batch = [(torch.randn(n, generator=gen), torch.tensor(10 + i)) for i, n in enumerate(lengths)]
    order = np.argsort(-np.array(lengths), kind="stable")  # [1, 3, 0, 2, 4]: longest first, ties in batch order
    expected_padded = np.zeros((len(batch), max(lengths)), dtype=np.float32)
    for row, i in enumerate(order):
        expected_padded[row, :lengths[i]] = batch[i][0].numpy()
    padded, got_lengths, labels = answer(batch)
    what = "pad_and_sort_collate(batch) for sequences of lengths [3, 5, 2, 5, 1] with labels [10, 11, 12, 13, 14]"
    ascending = np.argsort(np.array(lengths), kind="stable")
    check_close(got_lengths, torch.tensor([lengths[i] for i in order]), what=what + ": lengths", rtol=0, atol=0,
                looks_like={"sorted shortest first: pack_padded_sequence(enforce_sorted=True) wants the longest first":
                            torch.tensor([lengths[i] for i in ascending]),
                            "the padded length for every row instead of each sequence's own length":
                            torch.full((len(batch),), max(lengths))},
                hint="The lengths are the true lengths before padding, longest first.")
    check_close(padded, torch.from_numpy(expected_padded), what=what + ": padded", rtol=0, atol=0,
                hint="Longest first, equal lengths in batch order (a stable sort); the zeros of the padding come "
                     "after each sequence's values.")
    check_close(labels, torch.tensor([10 + i for i in order]), what=what + ": labels", rtol=0, atol=0,
                looks_like={"the labels are still in batch order while the sequences were sorted: every label "
                            "now sits next to another sequence": torch.tensor([10 + i for i in range(len(batch))])},
                hint="A label belongs to its sequence.")
    pack_padded_sequence(padded.unsqueeze(-1), got_lengths, batch_first=True, enforce_sorted=True)  # must not raise
    loader = DataLoader(batch, batch_size=5, collate_fn=answer)
    loaded_padded, _, _ = next(iter(loader))
    check_equal(tuple(loaded_padded.shape), (5, 5), what="the padded batch from DataLoader(..., collate_fn=...)",
                hint="The collate function receives the list of items of one batch.")


def _batches(sampler) -> list[list[int]]:
    return [[int(i) for i in batch] for batch in sampler]


def test_BucketBatchSampler(answer):
    n, batch_size = 38, 4  # 9 full batches and one of 2
    lengths = (torch.randperm(n, generator=torch.Generator().manual_seed(0)) + 1).tolist()  # distinct lengths
    sampler = answer(lengths, batch_size, generator=torch.Generator().manual_seed(0))
    n_batches = math.ceil(n / batch_size)
    check_equal(len(sampler), n_batches, what=f"len(BucketBatchSampler(38 lengths, batch_size={batch_size}))",
                looks_like={"the last, smaller batch (38 = 9 · 4 + 2) was dropped": n // batch_size},
                hint="There are ceil(n / batch_size) batches: the last, smaller batch counts too.")
    global_state = torch.get_rng_state()
    first = _batches(sampler)
    if not torch.equal(global_state, torch.get_rng_state()):
        broken_rule("BucketBatchSampler", "it drew from torch's global RNG although it was given a generator",
                    hint="torch.randperm draws from the global RNG unless it is given a generator.")
    check_equal(sorted(i for batch in first for i in batch), list(range(n)),
                what="all indices of one pass, sorted", hint="Every index exactly once per pass, the last, smaller "
                                                             "batch included.")
    sorted_order = np.argsort(lengths, kind="stable").tolist()
    expected_batches = [sorted(sorted_order[i:i + batch_size]) for i in range(0, n, batch_size)]
    got_batches = sorted(sorted(batch) for batch in first)
    check(got_batches == sorted(expected_batches), "BucketBatchSampler's batches are not neighbours in length order.",
          expected=sorted(expected_batches)[:3], got=got_batches[:3],
          hint="A batch holds indices that are neighbours in length order: shuffle which batch comes when, "
               "not what is in it.")
    batch_order = [sorted_order.index(batch[0]) // batch_size for batch in first]  # position of each batch
    check(batch_order != sorted(batch_order), "BucketBatchSampler yields its batches in length order, unshuffled.",
          expected="the batches in a random order", got=f"batch positions {batch_order}",
          hint="The order of the batches must be random.")
    second = _batches(sampler)
    check(second != first, "Two passes over BucketBatchSampler gave the same batch order.",
          expected="a new order each pass", got=f"the same order twice: {first[:3]} ...",
          hint="An order drawn once, when the sampler is built, repeats on every pass.")
    again = _batches(answer(lengths, batch_size, generator=torch.Generator().manual_seed(0)))
    check(again == first, "Two BucketBatchSamplers with generators seeded alike gave different orders.",
          expected=first[:3], got=again[:3], hint="Draw only from the generator you were given.")
    other = _batches(answer(lengths, batch_size, generator=torch.Generator().manual_seed(1)))
    check(other != first, "BucketBatchSamplers with seeds 0 and 1 gave the same order.",
          expected="different orders for different seeds", got=f"{first[:3]} ... both times",
          hint="Draw the order from the generator you were given.")
    dataset = TensorDataset(torch.arange(n), torch.tensor(lengths))
    loader = DataLoader(dataset, batch_sampler=answer(lengths, batch_size, generator=torch.Generator().manual_seed(0)))
    loaded = [batch[0].tolist() for batch in loader]
    check(loaded == first, "DataLoader(dataset, batch_sampler=BucketBatchSampler(...)) did not load your batches.",
          expected=first[:3], got=loaded[:3], hint="__iter__ must yield lists of indices, one list per batch.")
