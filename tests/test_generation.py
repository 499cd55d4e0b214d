"""Causal generation: whole-frame draws against bit-by-bit draws, batched decoding against
decoding alone, per-sequence stops, budgets and deadlines in a running batch, the engine that
batches concurrent callers."""

import time

import pytest
import torch

from bitlm.core.bits import DATA_BITS, FRAME_TABLE, bits_to_bytes
from bitlm.core.errors import BitLMError, TimeLimitExceeded
from bitlm.generation import GenerationOptions, generate_bits, generate_many
from bitlm.generation.causal import CausalBatch
from bitlm.generation.draws import bit_distribution, byte_distribution, draw_bytes
from bitlm.generation.engine import Cancelled, Engine
from bitlm.model import build_model
from bitlm.model.attention import KVCache
from bitlm.model.config import ModelConfig

# the flat trunk, the tree decoder and the in-frame transformer decoder
TRUNKS = {
    "flat": dict(trunk="flat"),
    "tree": dict(trunk="hierarchical"),
    "transformer": dict(trunk="hierarchical", local_decoder="transformer"),
}
# prompts of different lengths; the last is longer than the 8-byte window
PROMPTS = [b"", b"Hi", b"The quick brown", b"0123456789abcdefghijklmnopqrstuv"]


def tiny_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=72, **TRUNKS[kind])
    return build_model(config).eval()


def chained_byte_probabilities(model, context, temperature, top_p) -> torch.Tensor:
    """p (256,) of each byte drawn bit by bit through the in-frame decoder, each bit from its
    own tempered, top-p distribution given the bits before it (the reference sampler)."""
    probs = torch.ones(256)
    t, p = torch.tensor([temperature]), torch.tensor([top_p])
    for value in range(256):
        bits = FRAME_TABLE[value, :DATA_BITS].long()
        symbols = torch.cat((torch.tensor([2]), bits[:-1]))[None]  # [MASK, b_0 … b_6]
        q = bit_distribution(model.local(context[None], symbols)[0], t, p)
        probs[value] = q[torch.arange(DATA_BITS), bits].prod()
    return probs


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.5, 0.8), (0, 1)])
def test_whole_frame_distribution_is_the_bit_by_bit_one(temperature, top_p):
    model = tiny_model("tree")
    context = 3 * torch.randn(2, 510)  # node logits of two frames, sharp enough to matter
    whole = byte_distribution(context, torch.tensor([temperature] * 2), torch.tensor([top_p] * 2))
    for row in range(2):
        chained = chained_byte_probabilities(model, context[row], temperature, top_p)
        torch.testing.assert_close(whole[row], chained, atol=1e-6, rtol=1e-5)
        assert whole[row].sum().item() == pytest.approx(1.0, abs=1e-5)


def test_whole_frame_draws_follow_their_distribution():
    probs = torch.softmax(2 * torch.randn(256), dim=0)
    draws = draw_bytes(probs.expand(40_000, -1), torch.rand(40_000, generator=torch.Generator()))
    counts = torch.bincount(draws, minlength=256).float()
    expected = 40_000 * probs
    chi2 = ((counts - expected) ** 2 / expected.clamp(min=1e-9)).sum().item()
    assert chi2 < 256 + 5 * (2 * 256) ** 0.5  # mean 255, sd ~22.6
    zero = torch.zeros(256)
    zero[[3, 200]] = 0.5
    assert set(draw_bytes(zero.expand(3, -1), torch.tensor([0.0, 0.5, 0.999999])).tolist()) <= {
        3,
        200,
    }


def test_whole_frame_and_bit_by_bit_sampling_give_the_same_greedy_text():
    model = tiny_model("tree")
    texts = []
    for whole_frame in (True, False):
        batch = CausalBatch(model, whole_frame=whole_frame)
        continuation = batch.add(b"Hi", 24, GenerationOptions(temperature=0))
        while batch:
            batch.step()
        texts.append(bytes(continuation.output))
    assert texts[0] == texts[1] and len(texts[0]) == 24
    with pytest.raises(ValueError, match="local_decoder=tree"):
        CausalBatch(tiny_model("transformer"), whole_frame=True)


@pytest.mark.parametrize("kind", TRUNKS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_generation_gives_each_prompt_its_text_alone(kind, temperature):
    """Prompts of different lengths decoded together, windows cut back several times (40 bytes
    in an 8-byte window): each gets exactly the bits it gets alone with its own seed."""
    model = tiny_model(kind)
    options = [GenerationOptions(temperature=temperature, seed=s) for s in range(len(PROMPTS))]
    together = generate_many(model, PROMPTS, 40, options)
    for prompt, option, bits in zip(PROMPTS, options, together, strict=True):
        alone = generate_bits(model, prompt, 40, option)
        assert torch.equal(bits, alone)
        assert len(bits_to_bytes(bits)) == 40


@pytest.mark.parametrize("kind", TRUNKS)
def test_without_the_cache_batched_generation_gives_the_same_text(kind):
    model = tiny_model(kind)
    cached = generate_many(model, PROMPTS, 20, GenerationOptions(temperature=0))
    uncached = generate_many(model, PROMPTS, 20, GenerationOptions(temperature=0, kv_cache=False))
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached, strict=True))


def test_a_ragged_cache_attends_each_row_to_its_own_positions():
    """Rows at different lengths take one step together: each row's output is what it gets
    when run alone, and the keys past its length are never read."""
    model = tiny_model("flat")
    rows = [torch.randint(0, 2, (1, n)) for n in (5, 11, 2)]
    with torch.no_grad():
        alone = [model.predict(x)[:, -1] for x in rows]
        caches = model.new_caches(0)
        for x in rows:
            fresh = model.new_caches(1)
            model.predict(x[:, :-1], caches=fresh)
            for mine, theirs in zip(caches, fresh, strict=True):
                mine.extend(theirs)
        for cache in caches:  # what a row must never see: large keys and values past its end
            for row, length in enumerate(cache.lengths):
                cache.keys[row, :, length:] = 100.0
                cache.values[row, :, length:] = 100.0
        start = torch.tensor(caches[0].lengths)
        last = torch.cat([x[:, -1:] for x in rows])
        together = model.predict(last, start=start, caches=caches)[:, -1]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-4)


def test_cache_rows_can_leave_join_and_be_replaced():
    cache = KVCache((2, 1, 4, 1), torch.float32, "cpu")
    cache.append(torch.ones(2, 1, 2, 1), torch.ones(2, 1, 2, 1))
    other = KVCache((1, 1, 4, 1), torch.float32, "cpu")
    other.append(torch.full((1, 1, 3, 1), 7.0), torch.full((1, 1, 3, 1), 7.0))
    cache.extend(other)
    assert cache.lengths == [2, 2, 3] and cache.length == 3
    cache.keep([2, 0])
    assert cache.lengths == [3, 2] and cache.keys[0, 0, :3, 0].tolist() == [7.0] * 3
    cache.put(1, other)
    assert cache.lengths == [3, 3]
    with pytest.raises(RuntimeError, match="overflow"):
        cache.append(torch.ones(2, 1, 2, 1), torch.ones(2, 1, 2, 1))


@pytest.mark.parametrize("kind", ["flat", "tree"])
def test_each_sequence_stops_at_its_own_stop_string_and_budget_and_leaves(kind):
    model = tiny_model(kind)
    sampled = GenerationOptions(seed=5)  # an untrained model's greedy text repeats one byte
    full = bits_to_bytes(generate_bits(model, b"Hi", 30, sampled))
    stop = full[6:8]
    assert full.index(stop) > 3
    batch = CausalBatch(model)
    short = batch.add(b"Hi", 3, sampled)
    stopping = batch.add(b"Hi", 30, GenerationOptions(seed=5, stop=stop))
    long = batch.add(b"Hi", 30, sampled)
    finished, sizes = [], []
    while batch:
        finished += batch.step()
        sizes.append(len(batch))
    assert finished == [short, stopping, long]
    assert bytes(short.output) == full[:3]
    assert bytes(stopping.output) == full[: full.index(stop)]
    assert bytes(long.output) == full
    assert sizes[0] == 3 and sizes[-1] == 0 and sizes == sorted(sizes, reverse=True)
    assert sizes.count(1) == 30 - full.index(stop) - len(stop)


def test_a_sequence_past_its_deadline_leaves_with_the_error_and_the_others_go_on():
    model = tiny_model("tree")
    batch = CausalBatch(model)
    late = batch.add(b"a", 10, GenerationOptions(temperature=0, deadline=time.monotonic() - 1))
    on_time = batch.add(b"a", 10, GenerationOptions(temperature=0))
    assert batch.step() == [late]
    assert isinstance(late.error, TimeLimitExceeded) and not late.output
    while batch:
        batch.step()
    assert on_time.error is None and len(on_time.output) == 10
    with pytest.raises(TimeLimitExceeded):
        generate_many(model, [b"a"], 5, GenerationOptions(deadline=time.monotonic() - 1))


def test_a_stream_holds_back_only_what_may_still_become_the_stop_string():
    model = tiny_model("tree")
    batch = CausalBatch(model)
    continuation = batch.add(b"", 10, GenerationOptions(stop=b"END"))
    continuation.output[:] = b"abcE"
    assert continuation.settled() == b"abc"
    continuation.output[:] = b"abcEN"
    assert continuation.settled() == b"abc"
    continuation.output[:] = b"abcENx"
    assert continuation.settled() == b"abcENx"
    assert continuation.accept(ord("E")) is False and continuation.settled() == b"abcENx"
    continuation.accept(ord("N"))
    assert continuation.accept(ord("D")) is True
    assert continuation.settled() == b"abcENx"


def test_the_engine_lets_a_late_request_join_the_running_batch_and_leave_first():
    model = tiny_model("tree")
    engine = Engine(model, max_batch=4)
    try:
        seen = []
        long = engine.submit(b"Hi", 60, GenerationOptions(seed=1), lambda s, d: seen.append(d))
        while len(seen) < 5:  # the long one is decoding
            time.sleep(0.001)
        short = engine.submit(b"Yo", 5, GenerationOptions(seed=2))
        short_bits = short.result(timeout=60)
        assert not long.done  # the short one joined, finished and left while the long one ran
        long_bits = long.result(timeout=60)
        assert torch.equal(
            short_bits.bits, generate_bits(model, b"Yo", 5, GenerationOptions(seed=2))
        )
        assert torch.equal(
            long_bits.bits, generate_bits(model, b"Hi", 60, GenerationOptions(seed=1))
        )
        assert engine.steps < 65 and long.finish_reason == "length"
        cancelled = engine.submit(b"", 10_000, GenerationOptions())
        cancelled.cancel()
        with pytest.raises(Cancelled):
            cancelled.result(timeout=60)
        # what a batch cannot take (a suffix) is sampled directly, with sample's errors
        with pytest.raises(BitLMError, match="diffusion"):
            engine.sample(model, b"a", 3, GenerationOptions(suffix=b"z"))
    finally:
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(b"", 1, GenerationOptions())
