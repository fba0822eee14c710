"""Plausible wrong answers to the exercises of lesson 5 (dataset_loader_demo.py), each a small change to
exercises/solutions/dataset_loader_demo.py."""

from __future__ import annotations

from exercises.mistakes import Mistake

BATCH_ORDER = "torch.randperm(len(self.batches), generator=self.generator).tolist()"

MISTAKES = [
    Mistake("CharDataset", "one_item_too_many",
            "len = len(text) − seq_len + 1: the last item's target is one character short.",
            change={"return len(self.tokens) - self.seq_len  # the last target ends at the last character":
                    "return len(self.tokens) - self.seq_len + 1"},
            shows="one item too many: the last item's target would need a character past"),
    Mistake("CharDataset", "target_not_shifted", "Returns the input as its own target.",
            change={"self.tokens[i + 1:i + self.seq_len + 1]": "self.tokens[i:i + self.seq_len]"},
            shows="yours is the expected result shifted one place later along the last"),
    Mistake("CharDataset", "vocab_in_order_of_appearance",
            "Numbers characters in the order they first appear, not sorted.",
            change={"self.vocab = sorted(set(text))": "self.vocab = list(dict.fromkeys(text))"},
            shows="the characters in the order they first appear, not sorted"),

    Mistake("pad_and_sort_collate", "labels_not_reordered", "Sorts the sequences but leaves the labels in batch order.",
            change={"torch.stack([torch.as_tensor(batch[i][1]) for i in order])  # (B,), same order as the sequences":
                    "torch.stack([torch.as_tensor(label) for _, label in batch])  # (B,)"},
            shows="the labels are still in batch order while the sequences were sorted"),
    Mistake("pad_and_sort_collate", "shortest_first",
            "Sorts ascending: pack_padded_sequence(enforce_sorted=True) rejects it.",
            change={"key=lambda i: -len(batch[i][0])": "key=lambda i: len(batch[i][0])"},
            shows="sorted shortest first"),
    Mistake("pad_and_sort_collate", "padded_lengths",
            "Reports the padded length T_max for every row instead of the true lengths.",
            change={"torch.tensor([len(s) for s in sequences], dtype=torch.long)":
                    "torch.full((len(sequences),), max(len(s) for s in sequences), dtype=torch.long)"},
            shows="the padded length for every row instead of each sequence's own length"),
    Mistake("pad_and_sort_collate", "pads_on_the_left",
            "Pads at the start of each sequence (zeros first) instead of the end, where the lengths say the data is.",
            change={"padding_value=0.0)": 'padding_value=0.0, padding_side="left")'},
            shows="in rows [2, 3, 4] the zeros come first and the values after them"),

    Mistake("BucketBatchSampler", "drops_last_batch",
            "Keeps only full batches: n // batch_size of them, losing the remainder.",
            change={"range(0, len(order), batch_size)": "range(0, len(order) - batch_size + 1, batch_size)"},
            shows="the last, smaller batch (38 = 9 · 4 + 2) was dropped"),
    Mistake("BucketBatchSampler", "sorted_batch_order", "Never shuffles: the batches come shortest first, every pass.",
            change={BATCH_ORDER: "range(len(self.batches))"},
            shows="BucketBatchSampler yields its batches in length order, unshuffled"),
    Mistake("BucketBatchSampler", "shuffles_before_batching",
            "Shuffles all indices before cutting batches: random batches, not length buckets.",
            change={f"for i in {BATCH_ORDER}:\n            yield list(self.batches[i])":
                    "order = torch.randperm(sum(len(b) for b in self.batches), generator=self.generator).tolist()\n"
                    "        size = len(self.batches[0])\n"
                    "        for i in range(0, len(order), size):\n"
                    "            yield order[i:i + size]"},
            shows="BucketBatchSampler's batches are not neighbours in length order"),
    Mistake("BucketBatchSampler", "global_rng", "Ignores the generator and draws from torch's global RNG.",
            change={BATCH_ORDER: "torch.randperm(len(self.batches)).tolist()"},
            shows="breaks a rule of this exercise: draw only from the generator you were given."),
    Mistake("BucketBatchSampler", "order_fixed_in_init",
            "Draws the batch order once in __init__: every pass repeats it.",
            change={f"for i in {BATCH_ORDER}:": "for i in self.order:",
                    "self.generator = generator\n":
                    f"self.generator = generator\n        self.order = {BATCH_ORDER}\n"},
            shows="Two passes over BucketBatchSampler gave the same batch order"),
]
