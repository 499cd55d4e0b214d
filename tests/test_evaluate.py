"""Sliding-window evaluation scores every byte exactly once, with the right context."""

import gzip

import pytest
import torch

from bitlm.bits import bytes_to_bits
from bitlm.evaluate import compressor_references, model_bits, sliding_windows
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.objective import bit_cross_entropy


@pytest.mark.parametrize(
    ("n", "window", "stride"), [(1, 8, 4), (8, 8, 4), (37, 8, 3), (100, 16, 16)]
)
def test_windows_score_each_byte_once(n, window, stride):
    windows = sliding_windows(n, window, stride)
    length = min(window, n)
    scored = []
    end_prev = 0
    for start, first in windows:
        assert 0 <= start <= first and start + length <= n
        assert first == end_prev
        end_prev = start + length
        scored.extend(range(first, start + length))
    assert scored == list(range(n))


def test_model_bits_equals_direct_computation_within_one_window():
    torch.manual_seed(0)
    model = BitTransformerLM(ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=180))
    data = b"twenty bytes of text"
    logits, _ = model.eval()(bytes_to_bits(data)[None])
    _, expected, _ = bit_cross_entropy(logits, bytes_to_bits(data)[None])
    assert model_bits(model, data, progress=False) == pytest.approx(expected.item(), rel=1e-5)


def test_longer_context_never_hurts_an_untrained_model_much_and_totals_add_up():
    torch.manual_seed(0)
    model = BitTransformerLM(ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=90))
    data = bytes(range(256)) * 2
    total = model_bits(model, data, stride_bytes=5, batch_size=7, progress=False)
    assert total / len(data) == pytest.approx(8.0, abs=0.5)  # untrained: about a coin flip per bit


def test_gzip_reference():
    data = b"abc" * 1000
    refs = compressor_references(data)
    assert refs["gzip-9"] == pytest.approx(8 * len(gzip.compress(data, 9, mtime=0)) / 3000)
