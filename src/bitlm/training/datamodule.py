"""BitDataModule: a built-in corpus, the user's text files or a prepared folder as batches of
bits for Lightning.

Pipeline: source -> :class:`~bitlm.data.ByteStore` (uint8 memmap) -> deterministic
train/validation split (:func:`~bitlm.data.split_segments`) -> byte windows of
``seq_len / 9`` bytes, in the order of :class:`~bitlm.data.samplers.ResumableSampler` ->
:func:`~bitlm.data.collate_bits` -> uint8 bits ``(B, seq_len)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from bitlm.core.bits import frames_in
from bitlm.core.errors import BitLMError
from bitlm.data import (
    ByteStore,
    ResumableSampler,
    TrainWindows,
    ValWindows,
    collate_bits,
    min_bytes_for_split,
    split_period,
    split_segments,
)


class BitDataModule(L.LightningDataModule):
    """Batches of ``batch_size`` bit sequences of ``seq_len`` bits (``seq_len / 9`` bytes each).

    Source: ``path``, a folder written by ``bitlm-prepare`` (its index fixes the split:
    ``val_fraction`` and ``split_chunk_bytes`` are not used); else ``paths`` (files,
    directories, globs; see :func:`~bitlm.data.resolve_paths`) when given and non-empty; else
    the built-in ``corpus``. ``prepare_data`` builds the byte cache (atomically, so ranks cannot
    see a half-written file); ``setup`` opens it and splits it.

    Training windows start at every byte offset; their order is a pure function of ``seed`` and
    the batch number (:class:`~bitlm.data.samplers.ResumableSampler`), each rank reading its own
    share of every global batch, and a run resumed from a checkpoint continues at the batch the
    checkpoint's step reached, so it reads what an uninterrupted run reads. Validation windows
    are fixed and non-overlapping.
    """

    def __init__(
        self,
        corpus: str | None = "pydoc",
        paths: Sequence[str] | None = None,
        seq_len: int = 1152,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        split_chunk_bytes: int = 4096,
        num_workers: int = 0,
        cache_dir: str | None = None,
        path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(paths, str):
            paths = [paths]  # `data.paths=notes.txt` without brackets
        paths = [str(p) for p in paths] if paths else None  # plain list: checkpoints load safely
        path = str(path) if path else None
        self.save_hyperparameters()
        if not path and not paths and not corpus:
            raise BitLMError(
                "no training text: set data.corpus (e.g. pydoc), use data=text "
                "'data.paths=[a.txt,dir/]' or data=memmap data.path=PREPARED_DIR"
            )
        if path and paths:
            raise BitLMError("give data.path (a prepared folder) or data.paths (text), not both")
        self.window_bytes = frames_in(seq_len, "data.seq_len")
        _check_positive(batch_size=batch_size, split_chunk_bytes=split_chunk_bytes)
        if num_workers < 0:
            raise BitLMError(f"num_workers={num_workers} must be >= 0")
        split_period(val_fraction)  # validates val_fraction
        if split_chunk_bytes < self.window_bytes:
            raise BitLMError(
                f"split_chunk_bytes={split_chunk_bytes} is smaller than one window "
                f"({self.window_bytes} bytes = seq_len {seq_len} / 9), so no validation window "
                f"fits: raise data.split_chunk_bytes to at least {self.window_bytes}"
            )
        self.store: ByteStore | None = None
        self.train_set: TrainWindows | None = None
        self.val_set: ValWindows | None = None

    def _open_store(self) -> tuple[ByteStore, float | None, int | None]:
        """Open the bytes of the configured source (building the cache if it is missing), with
        the split a prepared folder fixes (``(None, None)`` for the others)."""
        hp = self.hparams
        if hp.path:
            store, index = ByteStore.from_prepared(hp.path)
            return store, index["split"]["val_fraction"], index["split"]["chunk_bytes"]
        if hp.paths:
            return ByteStore.from_paths(list(hp.paths), hp.cache_dir), None, None
        return ByteStore.from_corpus(hp.corpus, hp.cache_dir), None, None

    def prepare_data(self) -> None:
        """Build the byte cache once per node (Lightning calls this on local rank 0 only)."""
        self._open_store()

    def setup(self, stage: str | None = None) -> None:
        """Open the cache, split it, and build the window datasets (on every rank)."""
        self.store, val_fraction, chunk = self._open_store()
        val_fraction = val_fraction or self.hparams.val_fraction
        chunk = chunk or self.chunk_bytes(len(self.store))
        if chunk < self.window_bytes:
            raise BitLMError(
                f"the prepared split's chunks of {chunk} bytes are shorter than one window "
                f"({self.window_bytes} bytes), so no validation window fits: prepare the data "
                f"again with split_chunk_bytes >= {self.window_bytes}"
            )
        train, val = split_segments(len(self.store), val_fraction, chunk)
        self.train_segments = train
        self.train_set = TrainWindows(self.store, train, self.window_bytes)
        self.val_set = ValWindows(self.store, val, self.window_bytes)
        self._check_sizes(val_fraction, chunk)

    def byte_counts(self) -> torch.Tensor:
        """How often each byte value occurs in the training split, (256,) float64: the source
        of the ``marginal`` symbiosis reference (``telemetry.metrics.marginal_reference``)."""
        if self.store is None:
            raise RuntimeError("BitDataModule.setup() must run before byte_counts()")
        counts = np.zeros(256, dtype=np.int64)
        for start, end in self.train_segments:
            counts += np.bincount(self.store.data[start:end], minlength=256)
        return torch.from_numpy(counts.astype(np.float64))

    def chunk_bytes(self, n_bytes: int) -> int:
        """Split chunk size: ``split_chunk_bytes``, shrunk for short texts to
        ``max(window, n_bytes // p)`` so that even a few KB of text gets all ``p`` chunks of the
        split pattern (and so its validation chunk) instead of being refused."""
        period = split_period(self.hparams.val_fraction)
        return max(self.window_bytes, min(self.hparams.split_chunk_bytes, n_bytes // period))

    def _check_sizes(self, val_fraction: float, chunk: int) -> None:
        """Refuse text too short for one validation window or one full training batch."""
        hp = self.hparams
        n_bytes = len(self.store)
        needed = min_bytes_for_split(self.window_bytes, val_fraction, chunk)
        if n_bytes < needed:
            raise BitLMError(
                f"the text has {n_bytes} bytes, fewer than the {needed} needed for a training "
                f"and a validation window of {self.window_bytes} bytes (seq_len={hp.seq_len} "
                f"bits) with val_fraction={val_fraction}: use more text or a smaller "
                "model.max_seq_len"
            )
        if len(self.train_set) < hp.batch_size:
            raise BitLMError(
                f"only {len(self.train_set)} training windows, fewer than "
                f"batch_size={hp.batch_size}: use more text or a smaller data.batch_size"
            )

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        """Batches of bits ``(batch_size, seq_len)`` in the resumable shuffled order, this rank's
        share of each global batch; the incomplete last batch of an epoch is not read."""
        if self.train_set is None:
            raise RuntimeError("BitDataModule.setup() must run before asking for a dataloader")
        trainer = self.trainer
        sampler = ResumableSampler(
            len(self.train_set),
            self.hparams.batch_size,
            self.hparams.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            start_batch=self._batches_read,
        )
        return self._loader(self.train_set, sampler=sampler)

    def _batches_read(self) -> int:
        """Global batches the trainer has consumed: ``global_step · accumulate_grad_batches``
        (restored from a checkpoint on resume, so the order continues where it stopped)."""
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches if trainer else 0

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        """The fixed validation windows in order, as bits ``(≤ batch_size, seq_len)``."""
        if self.val_set is None:
            raise RuntimeError("BitDataModule.setup() must run before asking for a dataloader")
        return self._loader(self.val_set)

    def _loader(
        self, dataset: TrainWindows | ValWindows, sampler: ResumableSampler | None = None
    ) -> DataLoader:
        """Batches of ``dataset`` (in ``sampler``'s order when given, dropping an incomplete
        last batch); memory pinned for CUDA."""
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            drop_last=sampler is not None,
            num_workers=workers,
            collate_fn=collate_bits,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )


def _check_positive(**values: int) -> None:
    """Raise BitLMError naming the first of ``values`` that is not >= 1."""
    for name, value in values.items():
        if value < 1:
            raise BitLMError(f"{name}={value} must be a positive integer")
