"""Run-length coding and bit packing, the compressed forward, the compression ramp."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlm.core.bits import bytes_to_bits
from bitlm.core.errors import BitLMError
from bitlm.core.rle import (
    MAX_RUN,
    compress_bits,
    decompress_bits,
    pack_bits,
    run_length_decode,
    run_length_encode,
    unpack_bits,
)
from bitlm.model import ModelConfig, build_model
from bitlm.training.callbacks.compression_ramp import CompressionRamp
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import ENGLISH, quiet_trainer

TINY = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=288)

bit_lists = st.lists(st.integers(0, 1), max_size=2000)
# long runs too: blocks of equal bits of random length, up to several times MAX_RUN
run_lists = st.lists(st.tuples(st.integers(0, 1), st.integers(1, 700)), max_size=20)


def test_runs_are_value_count_pairs_and_long_runs_are_split():
    values, counts = run_length_encode(torch.tensor([0, 0, 0, 1, 1, 0]))
    assert values.tolist() == [0, 1, 0] and counts.tolist() == [3, 2, 1]
    values, counts = run_length_encode(torch.ones(600, dtype=torch.uint8))
    assert values.tolist() == [1, 1, 1] and counts.tolist() == [MAX_RUN, MAX_RUN, 90]
    assert counts.dtype == values.dtype == torch.uint8


@settings(max_examples=200, deadline=None)
@given(bit_lists)
def test_run_length_round_trip(bits):
    bits = torch.tensor(bits, dtype=torch.uint8)
    values, counts = run_length_encode(bits)
    assert torch.equal(run_length_decode(values, counts), bits)
    assert (counts >= 1).all() and int(counts.sum()) == len(bits)
    assert (values[1:] != values[:-1]).all()  # maximal runs: no long runs here


@settings(max_examples=100, deadline=None)
@given(run_lists)
def test_run_length_round_trip_with_long_runs(runs):
    bits = torch.cat([torch.full((n,), v, dtype=torch.uint8) for v, n in runs] or [torch.zeros(0)])
    bits = bits.to(torch.uint8)
    values, counts = run_length_encode(bits)
    assert torch.equal(run_length_decode(values, counts), bits)
    assert all(count <= MAX_RUN for count in counts.tolist())


@settings(max_examples=200, deadline=None)
@given(bit_lists)
def test_pack_round_trip(bits):
    bits = torch.tensor(bits, dtype=torch.uint8)
    packed = pack_bits(bits)
    assert packed.numel() == (len(bits) + 7) // 8
    assert torch.equal(unpack_bits(packed, len(bits)), bits)


def test_pack_puts_the_first_bit_most_significant():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 1, 1, 1])).tolist() == [0b10000011, 0b10000000]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 4))
def test_compressed_frames_round_trip_in_their_shape(data, rows):
    bits = bytes_to_bits(data * rows).view(rows, -1)
    compressed = compress_bits(bits)
    assert compressed.nbytes == compressed.n_runs + (compressed.n_runs + 7) // 8
    assert torch.equal(decompress_bits(compressed), bits)


def test_text_bits_run_short_so_run_length_coding_does_not_shrink_them():
    bits = bytes_to_bits(ENGLISH.encode() * 4)
    compressed = compress_bits(bits)
    assert bits.numel() / compressed.n_runs < 2.2  # mean run of text bits: about 2
    assert compressed.nbytes > bits.numel() / 8  # larger than the packed bits themselves


def test_bad_input_is_refused():
    with pytest.raises(BitLMError, match="0/1 values"):
        run_length_encode(torch.tensor([0, 2, 1]))
    with pytest.raises(BitLMError, match="differ"):
        run_length_decode(torch.zeros(2, dtype=torch.uint8), torch.ones(3, dtype=torch.uint8))
    compressed = compress_bits(torch.zeros(2, 9, dtype=torch.uint8))
    with pytest.raises(BitLMError, match="corrupt compressed bits"):
        decompress_bits(compressed._replace(shape=(2, 10)))


@pytest.mark.parametrize("trunk", ["flat", "hierarchical"])
def test_compressed_forward_equals_the_raw_forward(trunk):
    torch.manual_seed(0)
    model = build_model(ModelConfig(trunk=trunk, **TINY)).eval()
    bits = bytes_to_bits(ENGLISH.encode()[:64]).view(2, -1)
    raw_logits, _ = model(bits)
    compressed_logits, _ = model.forward_compressed(compress_bits(bits))
    assert torch.equal(raw_logits, compressed_logits)


# --- training on compressed inputs and the ramp ----------------------------------------------


def test_ramp_values_at_known_steps_follow_the_cosine_ramp():
    ramp = CompressionRamp(start=0.0, end=0.5, steps=100)
    assert [ramp.value(s) for s in (0, 25, 50, 100, 400)] == pytest.approx(
        [0.0, 0.25 * (1 - 2**-0.5), 0.25, 0.5, 0.5]
    )
    linear = CompressionRamp(start=0.2, end=1.0, shape="linear", steps=10)
    assert linear.value(5) == pytest.approx(0.6)
    restored = CompressionRamp()
    restored.load_state_dict(ramp.state_dict())
    assert restored.value(25) == ramp.value(25) and restored.steps == 100
    with pytest.raises(BitLMError, match=r"start and end must be in \[0, 1\]"):
        CompressionRamp(end=1.5)


def test_training_with_the_ramp_logs_raw_and_compressed_bpb_apart(tmp_path):
    L.seed_everything(0)
    module = BitLMModule(ModelConfig(**TINY), scheduler={"warmup_steps": 2})
    data = BitDataModule(seq_len=288, batch_size=4, cache_dir=str(tmp_path))
    seen: list[tuple[float, str]] = []

    class Record(L.Callback):  # which bpb metric the step updated
        counts = (0, 0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            counts = (
                pl_module.metrics["train_bpb"]._update_count,
                pl_module.metrics["train_bpb_compressed"]._update_count,
            )
            raw = counts[0] > self.counts[0]
            seen.append((pl_module.knobs.compress_prob, "raw" if raw else "compressed"))
            self.counts = counts

    ramp = CompressionRamp(start=0.0, end=1.0, shape="linear", steps=10)
    quiet_trainer(max_steps=20, limit_val_batches=0, callbacks=[ramp, Record()]).fit(module, data)
    assert seen[0] == (0.0, "raw")  # nothing is compressed at probability 0
    assert all(kind == "compressed" for _, kind in seen[10:])  # always at probability 1
    kinds = {kind for _, kind in seen[1:10]}
    assert kinds == {"raw", "compressed"}  # in between: a mix
    logged = set(module.trainer.callback_metrics)
    assert {"train/bpb", "train/bpb_compressed", "train/compress_prob"} <= logged


def test_compressed_inputs_are_refused_where_they_mean_nothing(tmp_path):
    with pytest.raises(BitLMError, match="compress_prob"):
        BitLMModule(ModelConfig(mode="diffusion", **TINY), compress_prob=0.5)
    with pytest.raises(BitLMError, match=r"must be in \[0, 1\]"):
        BitLMModule(ModelConfig(**TINY), compress_prob=1.5)
    module = BitLMModule(ModelConfig(unit="byte", **TINY))
    data = BitDataModule(seq_len=288, batch_size=4, cache_dir=str(tmp_path))
    with pytest.raises(BitLMError, match="drop the compression_ramp"):
        quiet_trainer(max_steps=1, callbacks=[CompressionRamp()]).fit(module, data)
