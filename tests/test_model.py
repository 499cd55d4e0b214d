"""BitTransformerLM: config validation, attention, reversible stack, generation."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from bitlm.bits import bits_to_bytes, bytes_to_bits
from bitlm.errors import BitLMError
from bitlm.model.attention import SelfAttention
from bitlm.model.config import ModelConfig
from bitlm.model.generate import generate
from bitlm.model.transformer import BitTransformerLM, shift_right


def tiny(**overrides) -> ModelConfig:
    values = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=72)
    return ModelConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(max_seq_len=100), "multiple of 9"),
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(n_layers=0), "n_layers"),
        (dict(dropout=1.5), "dropout"),
        (dict(activation_checkpointing=True), "reversible=false"),
        (dict(dropout="abc"), "dropout"),
        (dict(attn_chunk_size=1.5), "attn_chunk_size"),
        (dict(reversible="yes"), "true or false"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(BitLMError, match=message):
        tiny(**overrides)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(BitLMError, match="d_modle"):
        ModelConfig.from_dict({"d_modle": 3})
    assert ModelConfig.from_dict(tiny().to_dict()) == tiny()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_chunked_attention_equals_unchunked(causal, chunk):
    torch.manual_seed(0)
    full = SelfAttention(tiny()).eval()
    chunked = SelfAttention(tiny(attn_chunk_size=chunk)).eval()
    chunked.load_state_dict(full.state_dict())
    model = BitTransformerLM(tiny())
    x = torch.randn(2, 45, 32)
    rope = model.rope(0, 45)
    torch.testing.assert_close(
        chunked(x, rope, causal), full(x, rope, causal), atol=1e-6, rtol=1e-5
    )


def _loss_and_grads(model, bits, memory_efficient):
    model.zero_grad()
    torch.manual_seed(123)  # same dropout masks for both runs
    x = model.embed(shift_right(bits).long())
    h = model.trunk(x, model.rope(0, bits.size(1)), True, None, memory_efficient=memory_efficient)
    logits = model.head(model.norm(h))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), bits.flatten().long())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_reversible_gradients_match_plain_autograd(dropout):
    torch.manual_seed(0)
    model = BitTransformerLM(tiny(n_layers=4, dropout=dropout)).double().train()
    bits = torch.randint(0, 2, (3, 72))
    loss_rev, grads_rev = _loss_and_grads(model, bits, memory_efficient=True)
    loss_ref, grads_ref = _loss_and_grads(model, bits, memory_efficient=False)
    torch.testing.assert_close(loss_rev, loss_ref, atol=1e-10, rtol=0)
    for name, ref in grads_ref.items():
        torch.testing.assert_close(grads_rev[name], ref, atol=1e-6, rtol=1e-6, msg=name)
        assert ref.abs().sum() > 0, f"{name} got no gradient"


def test_reversible_inversion_reconstructs_inputs():
    torch.manual_seed(0)
    model = BitTransformerLM(tiny(n_layers=6)).double().eval()
    x1, x2 = torch.randn(2, 2, 63, 32, dtype=torch.float64)
    rope = model.rope(0, 63)
    y1, y2 = x1, x2
    for block in model.trunk.blocks:
        y1, y2 = block.couple(y1, y2, rope, True)
    r1, r2 = model.trunk.invert(y1, y2, rope, True)
    torch.testing.assert_close(r1, x1, atol=1e-10, rtol=0)
    torch.testing.assert_close(r2, x2, atol=1e-10, rtol=0)


def _saved_bytes(config: ModelConfig) -> int:
    torch.manual_seed(0)
    model = BitTransformerLM(config).train()
    x = model.embed(torch.randint(0, 2, (2, 72)))
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        model.trunk(x, model.rope(0, 72), True)
    return total


def test_reversible_activation_memory_does_not_grow_with_depth():
    reversible = [_saved_bytes(tiny(n_layers=n)) for n in (2, 4, 8)]
    plain = [_saved_bytes(tiny(n_layers=n, reversible=False)) for n in (2, 4, 8)]
    assert reversible[0] == reversible[1] == reversible[2] > 0
    assert plain[0] < plain[1] < plain[2]
    assert plain[2] > 4 * reversible[2]


def test_reversible_backward_under_bf16_autocast():
    torch.manual_seed(0)
    model = BitTransformerLM(tiny()).train()
    bits = torch.randint(0, 2, (2, 72))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(bits)
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_forward_predicts_each_bit_from_its_prefix_only():
    torch.manual_seed(0)
    model = BitTransformerLM(tiny()).eval()
    bits = torch.randint(0, 2, (1, 72))
    changed = bits.clone()
    changed[0, 40:] ^= 1
    logits, telemetry = model(bits)
    logits_changed, _ = model(changed)
    assert logits.shape == (1, 72, 2) and isinstance(telemetry, dict)
    torch.testing.assert_close(logits[:, :41], logits_changed[:, :41])
    assert not torch.allclose(logits[:, 41:], logits_changed[:, 41:])


def _greedy_uncached(model: BitTransformerLM, prompt: bytes, n_bytes: int) -> bytes:
    """Greedy decoding by re-running the full forward pass for every bit. The visible context is
    cut like the cached decoder's: once it fills the window, whole frames are dropped from the
    front until at most half the window is left."""
    max_len, keep = model.config.max_seq_len, model.config.max_seq_len // 2
    context = bytes_to_bits(prompt)[None].long()
    out = []
    for _ in range(n_bytes):
        frame = []
        for j in range(9):
            if context.size(1) > max_len - 1:
                drop = -(-(context.size(1) - keep) // 9) * 9
                context = context[:, drop:]
            if j < 8:
                probe = torch.cat((context, torch.zeros(1, 1, dtype=torch.long)), dim=1)
                bit = model(probe)[0][:, -1:].argmax(-1)
            else:
                bit = torch.stack(frame).sum().reshape(1, 1) % 2
            frame.append(bit[0, 0])
            context = torch.cat((context, bit), dim=1)
        out.append(torch.stack(frame))
    return bits_to_bytes(torch.cat(out))


@pytest.mark.parametrize("reversible", [True, False])
@pytest.mark.parametrize("n_bytes", [10, 40])  # 40 bytes: the 16-byte window is cut 4 times
def test_kv_cache_greedy_generation_matches_uncached(reversible, n_bytes):
    torch.manual_seed(0)
    model = BitTransformerLM(tiny(n_layers=3, max_seq_len=144, reversible=reversible)).eval()
    with torch.no_grad():
        expected = _greedy_uncached(model, b"Hi!", n_bytes)
    assert generate(model, b"Hi!", n_bytes, temperature=0) == expected
    assert generate(model, b"Hi!", n_bytes, temperature=0, kv_cache=False) == expected


@pytest.mark.parametrize("seed", range(3))
def test_generated_bits_always_decode_even_past_the_context(seed):
    """An untrained model's guesses about parity are random; output must still decode, also
    after the context window (8 bytes here) has been cut back several times."""
    torch.manual_seed(seed)
    model = BitTransformerLM(tiny())
    generator = torch.Generator().manual_seed(seed)
    out = generate(model, b"abc", 40, temperature=1.5, generator=generator)
    assert len(out) == 40
    assert bits_to_bytes(bytes_to_bits(out)) == out


def test_generate_stops_at_stop_string_and_handles_empty_prompt():
    torch.manual_seed(0)
    model = BitTransformerLM(tiny())
    full = generate(model, b"", 30, temperature=0)
    assert len(full) == 30
    stop = full[5:7]
    cut = generate(model, b"", 30, temperature=0, stop=stop)
    assert cut == full[: full.index(stop)]


def test_byte_baseline_is_causal_over_bytes_and_scores_every_byte():
    from bitlm.model import ByteTransformerLM, build_model

    torch.manual_seed(0)
    model = build_model(tiny(unit="byte", reversible=False)).eval()
    assert isinstance(model, ByteTransformerLM)
    bits = bytes_to_bits(b"abcdefgh")[None]
    changed = bytes_to_bits(b"abcdXfgh")[None]
    logits, _ = model(bits)
    assert logits.shape == (1, 8, 256)
    logits_changed, _ = model(changed)
    torch.testing.assert_close(logits[:, :5], logits_changed[:, :5])  # byte 4 is seen from 5 on
    assert not torch.allclose(logits[:, 5:], logits_changed[:, 5:])
    _, byte_bits = model.score(bits)
    assert byte_bits.shape == (1, 8)
    assert byte_bits.mean().item() == pytest.approx(8.0, abs=0.3)  # untrained: ≈ uniform


def test_export_round_trip_keeps_the_model_kind(tmp_path):
    from bitlm.hub import load_model, save_pretrained
    from bitlm.model import build_model

    for unit in ("bit", "byte"):
        torch.manual_seed(0)
        model = build_model(tiny(unit=unit)).eval()
        save_pretrained(model, tmp_path / unit)
        loaded = load_model(tmp_path / unit)
        assert type(loaded) is type(model)
        bits = bytes_to_bits(b"roundtr!")[None]  # 8 bytes = 72 bits, the whole context
        torch.testing.assert_close(loaded(bits)[0], model(bits)[0])
