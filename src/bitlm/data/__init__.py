"""Training data: corpora and text files -> byte memmap -> split -> byte windows -> bits.

See :mod:`bitlm.data.windows` for the train/validation split rule.
"""

from bitlm.data.corpus import CORPORA, load_corpus, pydoc_corpus, resolve_paths
from bitlm.data.samplers import EpochPermutation, ResumableSampler
from bitlm.data.store import ByteStore, default_cache_dir
from bitlm.data.windows import (
    Segment,
    TrainWindows,
    ValWindows,
    batch_bits,
    batch_size,
    collate_bits,
    min_bytes_for_split,
    split_period,
    split_segments,
)

__all__ = [
    "CORPORA",
    "ByteStore",
    "EpochPermutation",
    "ResumableSampler",
    "Segment",
    "TrainWindows",
    "ValWindows",
    "batch_bits",
    "batch_size",
    "collate_bits",
    "default_cache_dir",
    "load_corpus",
    "min_bytes_for_split",
    "pydoc_corpus",
    "resolve_paths",
    "split_period",
    "split_segments",
]
