"""Sliding-window evaluation scores every byte exactly once, with the right context."""

import gzip

import pytest
import torch

from bitlm.core.bits import bytes_to_bits
from bitlm.evaluation.bpb import compressor_references, model_bits, sliding_windows
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.objectives.losses import bit_cross_entropy


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
        assert first - start >= min(first, window - stride)  # context before the first scored byte
        end_prev = start + length
        scored.extend(range(first, start + length))
    assert scored == list(range(n))


def test_model_bits_equals_direct_computation_within_one_window():
    torch.manual_seed(0)
    model = BitTransformerLM(ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=180))
    data = b"twenty bytes of text"
    logits, _ = model.eval()(bytes_to_bits(data)[None])
    expected = bit_cross_entropy(logits, bytes_to_bits(data)[None])[1].sum()
    assert model_bits(model, data, progress=False) == pytest.approx(expected.item(), rel=1e-5)


def _direct_bits(model, data: bytes) -> float:
    logits, _ = model(bytes_to_bits(data)[None])
    return bit_cross_entropy(logits, bytes_to_bits(data)[None])[1].sum().item()


def test_model_bits_with_stride_equal_to_window_sums_independent_windows():
    torch.manual_seed(0)
    model = BitTransformerLM(ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=90)).eval()
    data = bytes(range(256)) * 2  # 512 bytes: 51 windows of 10 bytes, then the last 10 bytes
    total = model_bits(model, data, stride_bytes=10, batch_size=7, progress=False)
    expected = sum(_direct_bits(model, data[s : s + 10]) for s in range(0, 510, 10))
    last = model(bytes_to_bits(data[-10:])[None])[0]
    expected += bit_cross_entropy(last[:, -18:], bytes_to_bits(data[-2:])[None])[1].sum().item()
    assert total == pytest.approx(expected, rel=1e-5)


def test_model_bits_with_overlap_scores_later_bytes_in_context():
    torch.manual_seed(0)
    model = BitTransformerLM(ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=90)).eval()
    data = b"abcdefghijklmnopqrstuvwxyz"  # windows of 10, stride 5
    total = model_bits(model, data, stride_bytes=5, progress=False)
    expected = _direct_bits(model, data[:10])
    for start, first in [(5, 10), (10, 15), (15, 20), (16, 25)]:
        logits = model(bytes_to_bits(data[start : start + 10])[None])[0]
        tail = bytes_to_bits(data[first : start + 10])[None]
        expected += bit_cross_entropy(logits[:, -tail.size(1) :], tail)[1].sum().item()
    assert total == pytest.approx(expected, rel=1e-5)


def test_compressor_references_round_trip_and_rank_sensibly():
    import bz2
    import lzma

    import zstandard

    from bitlm.evaluation.bpb import COMPRESSORS

    text = (b"the quick brown fox jumps over the lazy dog; " * 40) + bytes(range(256))
    refs = compressor_references(text)
    assert set(refs) == {"gzip-9", "bzip2-9", "xz-9e", "zstd-19"}
    assert refs["gzip-9"] == pytest.approx(8 * len(gzip.compress(text, 9, mtime=0)) / len(text))
    decompress = {
        "gzip-9": gzip.decompress,
        "bzip2-9": bz2.decompress,
        "xz-9e": lzma.decompress,
        "zstd-19": zstandard.ZstdDecompressor().decompress,
    }
    for name, compress in COMPRESSORS.items():
        assert decompress[name](compress(text)) == text, name
        assert 0 < refs[name] < 3  # highly repetitive text compresses well
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
    assert min(compressor_references(bytes(noise.tolist())).values()) > 7.9  # noise does not
