"""Bit models (flat and hierarchical trunks) and the byte baseline: config validation,
attention, reversible stack, causality, parity, generation."""

import dataclasses

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from bitlm.core.bits import bits_to_bytes, bytes_to_bits
from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, generate
from bitlm.model import HierarchicalBitLM, build_model
from bitlm.model.attention import SelfAttention
from bitlm.model.config import ModelConfig
from bitlm.model.flops import batch_flops
from bitlm.model.transformer import BitTransformerLM, capture_internals
from bitlm.objectives.losses import causal_loss

TRUNKS = ["flat", "hierarchical"]


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
        (dict(trunk="patch"), "flat' or 'hierarchical"),
        (dict(unit="byte", trunk="hierarchical"), "model.trunk=flat"),
        (dict(trunk="hierarchical", local_d_model=30, local_n_heads=4), "local_d_model"),
        (dict(trunk="hierarchical", local_n_layers=0), "local_n_layers"),
        (dict(trunk="hierarchical", frame_embedding="onehot"), "frame_embedding must be one of"),
        (dict(frame_embedding="byte"), "option of the hierarchical trunk"),
        (dict(unit="byte", tree_head="prefix"), "option of the hierarchical trunk"),
        (
            dict(trunk="hierarchical", local_decoder="transformer", tree_head="prefix"),
            "model.local_decoder=tree",
        ),
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
    model.trunk.memory_efficient = memory_efficient
    torch.manual_seed(123)  # same dropout masks for both runs
    loss, _ = causal_loss(model, bits)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("trunk", TRUNKS)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_reversible_gradients_match_plain_autograd(trunk, dropout):
    """The custom backward (inputs recomputed from outputs) gives ordinary autograd's gradients,
    for every parameter, in float64; for the hierarchical trunk the global stack is reversible and
    the in-frame decoder sits on top of it."""
    torch.manual_seed(0)
    model = build_model(tiny(n_layers=4, dropout=dropout, trunk=trunk)).double().train()
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


@pytest.mark.parametrize("trunk", TRUNKS)
def test_reversible_backward_under_bf16_autocast(trunk):
    torch.manual_seed(0)
    model = build_model(tiny(trunk=trunk)).train()
    bits = torch.randint(0, 2, (2, 72))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(bits)
    logits.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "variant",
    [
        {"trunk": "flat"},
        {"trunk": "hierarchical"},
        {"trunk": "hierarchical", "frame_embedding": "byte", "tree_head": "prefix"},
        {"trunk": "hierarchical", "frame_embedding": "both"},
    ],
)
def test_forward_predicts_each_bit_from_its_prefix_only(variant):
    torch.manual_seed(0)
    model = build_model(tiny(**variant)).eval()
    bits = torch.randint(0, 2, (1, 72))
    changed = bits.clone()
    changed[0, 40:] ^= 1  # from the middle of frame 4 on
    logits, telemetry = model(bits)
    logits_changed, _ = model(changed)
    assert logits.shape == (1, 72, 2) and isinstance(telemetry, dict)
    torch.testing.assert_close(logits[:, :41], logits_changed[:, :41])
    assert not torch.allclose(logits[:, 41:], logits_changed[:, 41:])


def test_hierarchical_trunk_runs_once_per_byte_and_computes_parity():
    torch.manual_seed(0)
    model = build_model(tiny(trunk="hierarchical")).eval()
    assert isinstance(model, HierarchicalBitLM)
    seen = []
    model.trunk.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    bits = bytes_to_bits(b"parity!?")[None]  # 8 frames
    logits, _ = model(bits)
    assert seen == [torch.Size([1, 8, 32])]  # one global position per frame, not 9
    frames = bits.view(8, 9)
    parity_logits = logits.view(8, 9, 2)[:, 8]
    torch.testing.assert_close(parity_logits.argmax(-1), frames[:, :8].sum(-1) % 2)
    loss_data, byte_bits = causal_loss(model, bits)
    loss_all, byte_bits_all = causal_loss(model, bits, include_parity=True)
    # parity CE is 0: over 9 positions the mean is 8/9 of the data-bit mean; bpb is unchanged
    assert loss_all.item() == pytest.approx(loss_data.item() * 8 / 9, rel=1e-6)
    torch.testing.assert_close(byte_bits, byte_bits_all)
    with pytest.raises(BitLMError, match=r"model\.mode=causal and predicts causally"):
        model(bits, causal=False)


@pytest.mark.parametrize(
    "decoder",
    [{"local_decoder": "tree"}, {"tree_head": "prefix"}, {"local_decoder": "transformer"}],
)
def test_hierarchical_bit_probabilities_form_one_distribution_over_bytes(decoder):
    """Π_j p(b_j | b_<j) over the 8 data bits, summed over all 256 bytes, is 1: the in-frame
    decoder is a proper autoregressive factorisation, whatever its weights."""
    torch.manual_seed(0)
    model = build_model(tiny(trunk="hierarchical", **decoder)).eval()
    prefix = bytes_to_bits(b"ctx")
    frames = torch.stack([torch.cat((prefix, bytes_to_bits(bytes([v])))) for v in range(256)])
    with torch.no_grad():
        logits, _ = model(frames)
    last = frames[:, -9:-1].long()  # data bits of the enumerated byte
    log_p = torch.log_softmax(logits[:, -9:-1].double(), -1).gather(-1, last[..., None])
    assert log_p.sum((1, 2)).exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_tree_decoder_reads_the_node_of_each_prefix():
    """Bit j is predicted by the heap node 2^j − 1 + (value of b_0 … b_{j-1})."""
    from bitlm.model.hierarchical import TREE_NODES, TreeDecoder

    node_logits = torch.arange(2 * TREE_NODES, dtype=torch.float32)[None]  # logit = 2·node (+1)
    data = [1, 0, 1, 1, 0, 0, 1, 0]
    symbols = torch.tensor([[2, *data[:-1]]])  # MASK, b_0 … b_6
    nodes = TreeDecoder(tiny())(node_logits, symbols)[0, :, 0] / 2
    prefix_values = [int("".join(map(str, data[:j])) or "0", 2) for j in range(8)]
    assert nodes.tolist() == [2**j - 1 + v for j, v in enumerate(prefix_values)]


def test_byte_frame_embedding_reads_the_byte_value_and_a_row_for_masked_frames():
    from bitlm.model.hierarchical import byte_rows

    torch.manual_seed(0)
    frames = bytes_to_bits(b"Aa\xff")[None].view(1, 3, 9)
    start = torch.full((1, 1, 9), 2)  # the all-MASK start frame
    assert byte_rows(torch.cat((start, frames), 1)).tolist() == [[256, 65, 97, 255]]
    both = build_model(tiny(trunk="hierarchical", frame_embedding="both"))
    expected = both.embed_bits(frames) + both.byte_embedding.weight[[65, 97, 255]]
    torch.testing.assert_close(both.embed_frames(frames), expected)
    byte = build_model(tiny(trunk="hierarchical", frame_embedding="byte"))
    assert not hasattr(byte, "frame_embedding")  # no bit table: the byte row alone
    torch.testing.assert_close(
        byte.embed_frames(frames), byte.byte_embedding.weight[None, [65, 97, 255]]
    )


def test_prefix_tree_head_shares_terms_along_the_prefix():
    """Node 5 (prefix b_0 = 1, b_1 = 0) sums its depth term D[2] and P[2, 0, 1], P[2, 1, 0];
    with the shared terms at zero the head is a free linear map of its residual rows."""
    from bitlm.model.hierarchical import DATA_BITS, PrefixTreeHead, prefix_incidence

    incidence = prefix_incidence()
    prefix_terms = [(j, i, v) for j in range(DATA_BITS) for i in range(j) for v in (0, 1)]
    column = {t: 2 * DATA_BITS + 2 * k for k, t in enumerate(prefix_terms)}
    expected = {2 * 2, column[2, 0, 1], column[2, 1, 0]}
    assert set(incidence[2 * 5].nonzero().flatten().tolist()) == expected
    assert incidence.sum(1).tolist() == [
        1 + (n + 1).bit_length() - 1 for n in range(255) for _ in (0, 1)
    ]
    head = PrefixTreeHead(16, bias=False)
    h = torch.randn(3, 16)
    torch.testing.assert_close(head(h), h @ (incidence @ head.shared).T)  # R starts at zero
    with torch.no_grad():
        head.shared.zero_()
        head.weight.normal_()
    torch.testing.assert_close(head(h), h @ head.weight.T)
    with torch.no_grad():  # sampling keeps the composed weight until a parameter changes
        assert head.composed_weight() is head.composed_weight()  # built once
        head.shared.normal_()
        torch.testing.assert_close(head(h), h @ (head.weight + incidence @ head.shared).T)


def _greedy_uncached(model, prompt: bytes, n_bytes: int) -> bytes:
    """Greedy decoding by re-running the full forward pass for every bit. The visible context is
    cut like the cached decoder's: once it fills the window, whole frames are dropped from the
    front until at most half the window is left. The probe is padded to whole frames (the
    hierarchical trunk reads frames); causality makes the padding invisible to bit t."""
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
                probe = torch.cat((context, torch.zeros(1, 9 - j, dtype=torch.long)), dim=1)
                bit = model(probe)[0][:, context.size(1)].argmax(-1, keepdim=True)
            else:
                bit = torch.stack(frame).sum().reshape(1, 1) % 2
            frame.append(bit[0, 0])
            context = torch.cat((context, bit), dim=1)
        out.append(torch.stack(frame))
    return bits_to_bytes(torch.cat(out))


@pytest.mark.parametrize("trunk", TRUNKS)
@pytest.mark.parametrize("reversible", [True, False])
@pytest.mark.parametrize("n_bytes", [10, 40])  # 40 bytes: the 16-byte window is cut 4 times
def test_kv_cache_greedy_generation_matches_uncached(trunk, reversible, n_bytes):
    torch.manual_seed(0)
    config = tiny(n_layers=3, max_seq_len=144, reversible=reversible, trunk=trunk)
    model = build_model(config).eval()
    with torch.no_grad():
        expected = _greedy_uncached(model, b"Hi!", n_bytes)
    assert generate(model, b"Hi!", n_bytes, GenerationOptions(temperature=0)) == expected
    uncached = GenerationOptions(temperature=0, kv_cache=False)
    assert generate(model, b"Hi!", n_bytes, uncached) == expected


@pytest.mark.parametrize("trunk", TRUNKS)
@pytest.mark.parametrize("seed", range(3))
def test_generated_bits_always_decode_even_past_the_context(trunk, seed):
    """An untrained model's guesses about parity are random; output must still decode, also
    after the context window (8 bytes here) has been cut back several times."""
    torch.manual_seed(seed)
    model = build_model(tiny(trunk=trunk))
    out = generate(model, b"abc", 40, GenerationOptions(temperature=1.5, seed=seed))
    assert len(out) == 40
    assert bits_to_bytes(bytes_to_bits(out)) == out


@pytest.mark.parametrize("trunk", TRUNKS)
def test_generate_stops_at_stop_string_and_handles_empty_prompt(trunk):
    torch.manual_seed(0)
    model = build_model(tiny(trunk=trunk))
    full = generate(model, b"", 30, GenerationOptions(temperature=0))
    assert len(full) == 30
    stop = full[5:7]
    cut = generate(model, b"", 30, GenerationOptions(temperature=0, stop=stop))
    assert cut == full[: full.index(stop)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"diffusion_steps": True}, "diffusion_steps must be a positive integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"mode": "beam"}, "mode must be one of"),
    ],
)
def test_generation_options_name_the_bad_setting(options, message):
    with pytest.raises(BitLMError, match=message):
        GenerationOptions(**options)


def test_byte_baseline_is_causal_over_bytes_and_scores_every_byte():
    from bitlm.model import ByteTransformerLM

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
    _, byte_bits = causal_loss(model, bits)
    assert byte_bits.shape == (1, 8)
    assert byte_bits.mean().item() == pytest.approx(8.0, abs=0.3)  # untrained: ≈ uniform


def test_export_round_trip_keeps_the_model_kind(tmp_path):
    from bitlm.io import load_model, save_pretrained

    for unit, trunk in (("bit", "flat"), ("bit", "hierarchical"), ("byte", "flat")):
        torch.manual_seed(0)
        model = build_model(tiny(unit=unit, trunk=trunk)).eval()
        save_pretrained(model, tmp_path / trunk / unit)
        loaded = load_model(tmp_path / trunk / unit)
        assert type(loaded) is type(model)
        bits = bytes_to_bits(b"roundtr!")[None]  # 8 bytes = 72 bits, the whole context
        torch.testing.assert_close(loaded(bits)[0], model(bits)[0])


@pytest.mark.parametrize("trunk", TRUNKS)
@pytest.mark.parametrize("reversible", [True, False])
def test_capture_internals_records_attention_and_activations_without_changing_logits(
    trunk, reversible
):
    torch.manual_seed(0)
    model = build_model(tiny(trunk=trunk, reversible=reversible, n_layers=3)).eval()
    bits = torch.randint(0, 2, (2, 72))
    positions = 72 if trunk == "flat" else 8
    with torch.no_grad():
        expected, _ = model(bits)
        with capture_internals(model) as internals:
            logits, _ = model(bits)
    torch.testing.assert_close(logits, expected)
    assert len(internals.attention) == len(internals.activations) == 3
    weights = internals.attention[1][0]
    assert weights.shape == (2, 2, positions, positions)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, positions))
    assert weights.triu(1).abs().max() == 0  # causal: no weight on later positions
    assert internals.activations[2][0].shape == (2, positions, 32)
    assert all(block.f.attn.record is None for block in model.trunk.blocks)
    assert not any(block.g._forward_pre_hooks for block in model.trunk.blocks)


@pytest.mark.parametrize("unit, head", [("byte", 256), ("bit", 510)])
def test_batch_flops_are_the_matmuls_of_forward_and_twice_that_backward(unit, head):
    """Forward: B·T·(24·L·d² + 2·d·head) for the projections and output head, B·L·4·T²·d for
    QKᵀ and AV (counted full, as the kernel computes them); backward twice forward."""
    B, T, d, L = 4, 32, 32, 2
    trunk = "flat" if unit == "byte" else "hierarchical"
    config = tiny(max_seq_len=9 * T, unit=unit, trunk=trunk, reversible=False)
    forward = B * T * (24 * L * d * d + 2 * d * head) + B * L * 4 * T * T * d
    assert batch_flops(config, B, 9 * T, training=False) == forward
    assert batch_flops(config, B, 9 * T, training=True) == 3 * forward
    with torch.inference_mode():  # a model grown during validation is counted there
        assert batch_flops(config, B, 9 * T, training=True) == 3 * forward


def test_halting_models_are_counted_at_full_depth():
    config = tiny(trunk="hierarchical", use_act=True)
    full = dataclasses.replace(config, use_act=False)
    assert batch_flops(config, 2, 72, training=True) == batch_flops(full, 2, 72, training=True)


def test_reversible_batch_flops_are_its_plain_twins_model_flops():
    """MFU counts model FLOPs: the recomputed forward of the reversible backward is left out."""
    config = tiny(trunk="hierarchical", reversible=True)
    plain = dataclasses.replace(config, reversible=False)
    assert batch_flops(config, 2, 72, training=True) == batch_flops(plain, 2, 72, training=True)
