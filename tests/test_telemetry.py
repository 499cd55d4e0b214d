"""K, C, S telemetry: exact values on known inputs, LZ76 against the textbook algorithm, the
differentiable losses, the torchmetrics reduction across processes, and the synthesizer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from bitlm.core.bits import bytes_to_bits
from bitlm.core.errors import BitLMError
from bitlm.objectives.regularisers import KCSLoss
from bitlm.telemetry.lz76 import lz76_phrase_counts
from bitlm.telemetry.metrics import (
    LZComplexity,
    Negentropy,
    Symbiosis,
    attention_entropy,
    lz76_complexity,
    marginal_reference,
    negentropy,
    prediction_complexity,
    prediction_negentropy,
    prediction_telemetry,
    symbiosis,
)
from bitlm.telemetry.synthesizer import TelemetrySynthesizer
from tests.conftest import ENGLISH


def kaspar_schuster(s: list[int]) -> int:
    """LZ76 phrase count by Kaspar & Schuster's (1987) algorithm: the reference. ``start`` is
    where the current phrase begins, ``i`` a candidate earlier copy, ``k`` the match length."""
    n = len(s)
    if n <= 1:
        return n
    i, k, start, c, k_max = 0, 1, 1, 1, 1
    while True:
        if s[i + k - 1] == s[start + k - 1]:
            k += 1
            if start + k > n:
                return c + 1
        else:
            k_max = max(k, k_max)
            i += 1
            if i == start:
                c += 1
                start += k_max
                if start + 1 > n:
                    return c
                i, k, k_max = 0, 1, 1
            else:
                k = 1


def logits_for(p: torch.Tensor) -> torch.Tensor:
    """2-way logits (…, 2) whose softmax gives P(bit = 1) = p."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.stack((torch.zeros_like(p), (p / (1 - p)).log()), dim=-1)


def frames_of(data: bytes) -> torch.Tensor:
    return bytes_to_bits(data)[None]  # (1, 9n)


def test_lz76_of_the_textbook_example():
    # Kaspar & Schuster's example: 0 · 001 · 10 · 100 · 1000 · 101
    s = [int(b) for b in "0001101001000101"]
    assert kaspar_schuster(s) == 6
    assert lz76_phrase_counts(torch.tensor([s])).tolist() == [6]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 300])
@pytest.mark.parametrize("p", [0.5, 0.1, 0.0])
def test_lz76_matches_kaspar_schuster(n, p):
    g = torch.Generator().manual_seed(n)
    x = (torch.rand(12, n, generator=g) < p).long()
    x[1] = torch.arange(n) % 2  # periodic rows too
    x[2] = (torch.arange(n) % 5 == 0).long()
    expected = [kaspar_schuster(row.tolist()) for row in x]
    assert lz76_phrase_counts(x).tolist() == expected


def test_lz76_of_english_bits_matches_reference():
    bits = frames_of(ENGLISH.encode())
    data = bits.view(-1, 9)[:, :8].flatten()
    assert lz76_phrase_counts(data[None]).item() == kaspar_schuster(data.tolist())


def test_negentropy_of_known_byte_histograms():
    assert negentropy(frames_of(b"a" * 40)).item() == pytest.approx(1.0)
    assert negentropy(frames_of(b"ab" * 20)).item() == pytest.approx(1 - 1 / 8)  # H8 = 1 bit
    assert negentropy(frames_of(bytes(range(256)))).item() == pytest.approx(0.0, abs=1e-6)
    assert negentropy(frames_of(b"abcd" * 10)).item() == pytest.approx(1 - 2 / 8)
    english = negentropy(frames_of(ENGLISH.encode())).item()
    assert 0.35 < english < 0.6  # ~4.3 bits of unigram byte entropy


def test_lz76_complexity_of_known_sequences():
    n = 8 * 64
    constant = lz76_complexity(frames_of(b"\x00" * 64)).item()
    assert constant == pytest.approx(2 * math.log2(n) / n)  # phrases 0 · 00…0
    alternating = lz76_complexity(frames_of(b"\x55" * 64)).item()  # 0101…
    assert alternating == pytest.approx(3 * math.log2(n) / n)  # 0 · 1 · 0101…
    noise = torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(0))
    assert lz76_complexity(frames_of(bytes(noise.tolist()))).item() > 0.9
    english = lz76_complexity(frames_of(ENGLISH.encode())).item()
    assert 0.5 < english < 1.0


def test_prediction_negentropy_and_complexity_by_hand():
    L = 9 * 4
    half = logits_for(torch.full((1, L), 0.5))
    assert prediction_negentropy(half).item() == pytest.approx(0.0, abs=1e-5)
    assert prediction_complexity(half).item() == pytest.approx(1.0)  # 2·(¼ + ¼)
    sure = logits_for(torch.zeros(1, L))
    assert prediction_negentropy(sure).item() == pytest.approx(1.0, abs=1e-4)
    assert prediction_complexity(sure).item() == pytest.approx(0.0, abs=1e-5)
    quarter = logits_for(torch.full((1, L), 0.25))
    assert prediction_complexity(quarter).item() == pytest.approx(2 * (2 * 0.25 * 0.75))
    h2 = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert prediction_negentropy(quarter).item() == pytest.approx(1 - h2, rel=1e-5)


def test_symbiosis_by_hand():
    p = torch.full((2, 18), 0.9)
    q = torch.full((9,), 0.5)
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert symbiosis(logits_for(p), q).tolist() == pytest.approx([math.exp(-kl)] * 2, rel=1e-5)
    assert symbiosis(logits_for(p), torch.full((2, 18), 0.9)).tolist() == pytest.approx([1, 1])
    assert symbiosis(logits_for(p), torch.full((9,), 0.9)).tolist() == pytest.approx([1, 1])


def test_marginal_reference_is_the_frame_of_a_single_byte():
    counts = torch.zeros(256)
    counts[ord("a")] = 10
    assert marginal_reference(counts).tolist() == frames_of(b"a")[0].float().tolist()
    counts[ord("b")] = 10  # a = 0110 0001 (parity 1), b = 0110 0010 (parity 1)
    expected = [0, 1, 1, 0, 0, 0, 0.5, 0.5, 1]
    assert marginal_reference(counts).tolist() == pytest.approx(expected)


def test_attention_entropy():
    uniform = torch.full((1, 2, 3, 8), 1 / 8)
    assert attention_entropy(uniform).tolist() == pytest.approx([math.log(8)] * 2)
    one_hot = torch.zeros(1, 2, 3, 8)
    one_hot[..., 0] = 1
    assert attention_entropy(one_hot).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_metrics_accumulate_per_sequence_means():
    metric = Negentropy()
    metric.update(frames_of(b"a" * 8))  # K = 1
    metric.update(torch.cat([frames_of(b"ab" * 4)] * 3))  # K = 7/8, three sequences
    assert metric.compute().item() == pytest.approx((1 + 3 * 7 / 8) / 4)
    complexity = LZComplexity()
    complexity.update(logits_for(torch.full((2, 18), 0.5)))  # proxy on logits: 1
    assert complexity.compute().item() == pytest.approx(1.0)


def _distributed_mean(rank: int, world: int, init_file: str, results) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    metric = Symbiosis()
    q = torch.full((9,), 0.5)
    # rank 0: one sequence with S = 1; rank 1: three with S = exp(−KL(0.5 ‖ 0.9))
    p = torch.full((1, 9), 0.5) if rank == 0 else torch.full((3, 9), 0.9)
    metric.update(logits_for(p), q)
    results[rank] = metric.compute().item()
    torch.distributed.destroy_process_group()


def test_metric_reduces_over_processes_weighing_every_sequence_once(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_distributed_mean, args=(2, str(tmp_path / "init"), results), nprocs=2)
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    expected = (1 + 3 * math.exp(-kl)) / 4  # not the mean of the two ranks' means
    assert results[0] == pytest.approx(expected, rel=1e-5)
    assert results[1] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("term", ["lambda_K", "lambda_C", "lambda_S"])
def test_every_loss_term_has_a_gradient(term):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 36, 2, generator=g, requires_grad=True)
    bits = bytes_to_bits(b"abcdefgh").view(2, 36)
    loss, telemetry = KCSLoss(**{term: 1.0})(logits, bits, torch.full((9,), 0.4))
    assert loss.item() > 0
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert set(telemetry) == {"K", "C", "S", "K_data", "C_data"}


def test_loss_is_the_weighted_sum_of_its_terms():
    logits = logits_for(torch.full((1, 18), 0.5))  # K = 0, C = 1, S vs 0.5 = 1
    bits = frames_of(b"aa")  # K_data = 1; data bits 01100001 01100001: 7 flips in 15
    loss, t = KCSLoss(0.5, 2.0, 3.0)(logits, bits, torch.full((9,), 0.5))
    assert t["C_data"].item() == pytest.approx(2 * 7 / 15)
    expected = 0.5 * 1.0 + 2.0 * abs(1.0 - 2 * 7 / 15) + 3.0 * 0.0
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert not KCSLoss().active


def test_synthesizer_separates_ordered_english_and_noise():
    g = torch.Generator().manual_seed(0)
    noise = [bytes(torch.randint(0, 256, (32,), generator=g).tolist()) for _ in range(3)]
    english = [ENGLISH[i : i + 32].encode() for i in (0, 40, 80)]
    ordered = [b"a" * 32, b"ab" * 16, b"z" * 32]
    bits = torch.stack([bytes_to_bits(s) for s in [*ordered, *english, *noise]])
    clusters = TelemetrySynthesizer(seed=0).cluster_sequences(bits, 3)
    groups = clusters.labels.view(3, 3)
    assert all(len(set(row.tolist())) == 1 for row in groups)  # each kind in one cluster
    assert len(set(groups[:, 0].tolist())) == 3  # and the three kinds apart
    for j, index in enumerate(clusters.representatives.tolist()):
        assert clusters.labels[index] == j
        assert torch.equal(clusters.sequences[j], bits[index])
    assert clusters.feature_names == ["K", "C_lz76"]


def test_synthesizer_with_a_model_adds_prediction_features_and_refuses_bad_k():
    from bitlm.model import build_model
    from bitlm.model.config import ModelConfig

    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, max_seq_len=36))
    bits = torch.stack([bytes_to_bits(s) for s in (b"aaaa", b"abcd", b"wxyz")])
    synthesizer = TelemetrySynthesizer(model)
    features, names = synthesizer.features(bits)
    assert names == ["K", "C_lz76", "K_pred", "C_pred", "S"] and features.shape == (3, 5)
    with pytest.raises(BitLMError, match="n_clusters=4"):
        synthesizer.cluster_sequences(bits, 4)


def test_prediction_telemetry_equals_the_single_metrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 36, 2, generator=g)
    for reference in (torch.rand(9, generator=g), torch.rand(3, 36, generator=g)):
        together = prediction_telemetry(logits, reference)
        torch.testing.assert_close(together["K"], prediction_negentropy(logits))
        torch.testing.assert_close(together["C"], prediction_complexity(logits))
        torch.testing.assert_close(together["S"], symbiosis(logits, reference))
