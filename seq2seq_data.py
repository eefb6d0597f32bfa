"""Tokenised article -> title pairs and the training DataLoader (dynamic padding, length grouping).

Padding is per batch with ``transformers.DataCollatorForSeq2Seq`` (labels padded with -100 so they
are ignored by the loss), and batches are grouped by source length with transformers'
``get_length_grouped_indices`` (the Trainer's ``group_by_length``), reseeded every epoch so a resumed
run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class FeatureDataset(Dataset):
    """A list of tokenised examples (``input_ids``, ``attention_mask``, ``labels``) as a map-style dataset."""

    def __init__(self, features: list[dict[str, list[int]]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]


def tokenize_pairs(
    records: Sequence[dict[str, Any]],
    tokenizer,
    *,
    text_column: str = "maintext",
    summary_column: str = "title",
    source_prefix: str = "",
    max_source_length: int = 512,
    max_target_length: int = 64,
) -> FeatureDataset:
    """Tokenise records into model inputs. Sources are truncated to ``max_source_length`` tokens and
    titles to ``max_target_length`` tokens (EOS included). Returns a dataset of unpadded examples."""
    sources = [source_prefix + r[text_column] for r in records]
    targets = [r[summary_column] for r in records]
    enc = tokenizer(sources, max_length=max_source_length, truncation=True)
    labels = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
    return FeatureDataset([
        {"input_ids": ids, "attention_mask": mask, "labels": lab, "example_index": i}
        for i, (ids, mask, lab) in enumerate(zip(enc["input_ids"], enc["attention_mask"], labels))
    ])


class EpochLengthGroupedSampler(Sampler[int]):
    """Indices grouped by length in random mega-batches (transformers' ``get_length_grouped_indices``),
    or a plain random permutation, drawn from a generator seeded with ``seed + epoch``.

    Call :meth:`set_epoch` before each epoch; the order depends only on (seed, epoch), which makes
    resuming mid-epoch exact.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_length:
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
        return iter(torch.randperm(len(self.lengths), generator=generator).tolist())


class IndexedSeq2SeqCollator:
    """``DataCollatorForSeq2Seq`` (labels padded with -100; pad to a multiple of 8 under mixed
    precision for tensor cores) that also returns ``example_index`` ``[batch]``, the position of each
    example in the source records (the RL stage uses it to find the raw reference titles)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        from transformers import DataCollatorForSeq2Seq

        self.inner = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100,
                                            pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        index = torch.tensor([f["example_index"] for f in features])
        batch = self.inner([{k: v for k, v in f.items() if k != "example_index"} for f in features])
        batch["example_index"] = index
        return batch


def get_train_dataloader(dataset: FeatureDataset, collator, batch_size: int, *, seed: int,
                         group_by_length: bool = True, num_workers: int = 0) -> DataLoader:
    """Training DataLoader over ``dataset``: batches of ``batch_size`` examples, the order fixed by
    (seed, epoch) through :class:`EpochLengthGroupedSampler` (``loader.sampler.set_epoch``)."""
    lengths = [len(f["input_ids"]) for f in dataset.features]
    sampler = EpochLengthGroupedSampler(lengths, batch_size, seed, group_by_length)
    # its own generator: creating an iterator would otherwise draw from the global RNG, and a resumed run
    # (which creates one more iterator) would then see different dropout masks
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator,
                      num_workers=num_workers, drop_last=False, generator=torch.Generator().manual_seed(seed))
