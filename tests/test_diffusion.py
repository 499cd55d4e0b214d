"""Diffusion mode: schedules, corruption, the bound, the sampler, the curriculum, the commands."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from bitlm.core.bits import DATA_BITS, FRAME_BITS, bytes_to_bits, decode_bits
from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, safe_sample_with_retry, sample, sample_many
from bitlm.generation.diffusion import denoise, diffusion_generate, repair_parity
from bitlm.io import save_pretrained
from bitlm.model import ModelConfig, build_model
from bitlm.model.config import NOISE_SCHEDULES
from bitlm.model.noise import (
    SCHEDULES,
    corruption_rate,
    draw_mask,
    mask_exactly,
    rate_derivative,
    sample_noise_times,
)
from bitlm.model.transformer import MASK
from bitlm.objectives.base import Knobs
from bitlm.objectives.denoising import DiffusionObjective, elbo_bits
from bitlm.objectives.losses import causal_loss
from bitlm.training.callbacks.diffusion_curriculum import DiffusionCurriculum
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import ENGLISH, TINY_TRAIN, assert_user_error, quiet_trainer

TINY = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=288)
TRUNKS = ["flat", "hierarchical"]
KINDS = [*TRUNKS, "frame"]
"""Diffusion models: the two trunks masking bits, and the hierarchical one masking frames."""


def diffusion_model(kind: str = "hierarchical", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    unit = {"diffusion_unit": "frame"} if kind == "frame" else {}
    trunk = "hierarchical" if kind == "frame" else kind
    return build_model(ModelConfig(trunk=trunk, mode="diffusion", **{**TINY, **unit, **overrides}))


# --- schedules and corruption --------------------------------------------------------------


def test_schedule_names_match_the_config_choices():
    assert tuple(SCHEDULES) == NOISE_SCHEDULES


@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
def test_schedules_are_monotone_bounded_and_run_from_clean_to_fully_masked(schedule):
    t = torch.linspace(0, 1, 1001)
    rate = corruption_rate(schedule, t)
    assert rate[0] == 0 and rate[-1] == pytest.approx(1.0, abs=1e-6)
    assert (rate.diff() > 0).all()
    assert ((rate >= 0) & (rate <= 1)).all()


def test_schedules_have_their_documented_shapes():
    half = {name: corruption_rate(name, 0.5).item() for name in NOISE_SCHEDULES}
    assert half["linear"] == 0.5
    assert half["cosine"] == pytest.approx(1 - math.cos(math.pi / 4))  # slow start: 0.29
    assert half["exp"] == pytest.approx((1 - math.exp(-2.5)) / (1 - math.exp(-5)))  # 0.92


def test_unknown_schedule_is_refused():
    with pytest.raises(BitLMError, match="noise schedule must be one of"):
        corruption_rate("sqrt", 0.5)
    with pytest.raises(BitLMError, match=r"model\.noise_schedule"):
        ModelConfig(mode="diffusion", noise_schedule="sqrt")


@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_empirical_corruption_rate_matches_the_schedule(schedule, t):
    bits = torch.randint(0, 2, (64, 900), generator=torch.Generator().manual_seed(1))
    rate = corruption_rate(schedule, torch.full((64,), t))
    masked = draw_mask(bits.shape, rate, torch.Generator().manual_seed(2))
    expected = rate[0].item()
    sigma = math.sqrt(expected * (1 - expected) / masked.numel())
    assert abs(masked.float().mean().item() - expected) < 5 * sigma + 1e-9


def test_mask_exactly_masks_the_requested_count_per_row():
    counts = torch.tensor([0, 1, 17, 90])
    masked = mask_exactly(torch.Size((4, 90)), counts, torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [0, 1, 17, 90]


# --- model --------------------------------------------------------------------------------


@pytest.mark.parametrize("trunk", TRUNKS)
def test_diffusion_predictions_depend_on_later_bits(trunk):
    model = diffusion_model(trunk).eval()
    bits = bytes_to_bits(b"hello world, bit by bit!").long()[None]
    changed = bits.clone()
    changed[0, -5] ^= 1  # a bit in the last frame
    first, _ = model(bits)
    second, _ = model(changed)
    assert first.shape == (1, bits.size(1), 2)
    assert not torch.allclose(first[0, :9], second[0, :9])  # the first frame sees it


@pytest.mark.parametrize("trunk", TRUNKS)
def test_models_run_only_in_the_mode_they_were_built_for(trunk):
    with pytest.raises(BitLMError, match=r"model\.mode=diffusion and predicts bidirectionally"):
        diffusion_model(trunk)(torch.zeros(1, 18, dtype=torch.long), causal=True)
    causal = build_model(ModelConfig(trunk=trunk, **TINY))
    with pytest.raises(BitLMError, match=r"model\.mode=causal and predicts causally"):
        causal(torch.zeros(1, 18, dtype=torch.long), causal=False)


def test_a_diffusion_model_has_no_causal_score_and_the_byte_baseline_no_diffusion():
    with pytest.raises(BitLMError, match="elbo_bits bounds"):
        causal_loss(diffusion_model("flat"), torch.zeros(1, 18, dtype=torch.long))
    with pytest.raises(BitLMError, match=r"model\.mode=diffusion is for bit models"):
        ModelConfig(unit="byte", mode="diffusion")


@pytest.mark.parametrize("kind", KINDS)
def test_the_bound_of_a_model_that_knows_nothing_is_one_bit_per_bit(kind):
    """p = 1/2 for every bit it predicts: 9 bits per byte for a bit model, 8 for a frame model
    (parity is computed)."""
    model = diffusion_model(kind)
    torch.nn.init.zeros_(model.head.weight)
    bits = bytes_to_bits(ENGLISH.encode()[:64]).view(2, -1)
    bound = elbo_bits(model, bits, torch.Generator().manual_seed(0))
    predicted = DATA_BITS if kind == "frame" else FRAME_BITS
    assert bound.tolist() == pytest.approx([bits.size(1) / FRAME_BITS * predicted] * 2, rel=1e-5)


# --- sampler ------------------------------------------------------------------------------


def test_parity_repair_flips_the_least_confident_bit_of_odd_frames():
    bits = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]])
    confidence = torch.full((1, 18), 0.9)
    confidence[0, 3] = 0.6  # the weakest bit of the odd first frame
    repaired, n = repair_parity(bits, confidence)
    assert n == 1
    assert repaired[0, :9].tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert torch.equal(repaired[0, 9:], bits[0, 9:])  # the even frame is untouched


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("remask", [False, True])
def test_infilling_keeps_prompt_and_suffix_and_always_decodes(kind, remask):
    model = diffusion_model(kind).eval()
    given = bytes_to_bits(b"Once upon a ").long()
    tail = bytes_to_bits(b" there was").long()
    gap = torch.full((9 * 6,), MASK)
    symbols = torch.cat((given, gap, tail))[None]
    options = GenerationOptions(diffusion_steps=8, schedule="cosine", remask=remask)
    filled, repairs = denoise(model, symbols, options)
    assert torch.equal(filled[0, : len(given)], given)
    assert torch.equal(filled[0, -len(tail) :], tail)
    data, errors = decode_bits(filled[0].to(torch.uint8), errors="replace")
    assert errors == 0 and len(data) == 12 + 6 + 10
    assert 0 <= repairs <= 6


@pytest.mark.parametrize("kind", ["hierarchical", "frame"])
@pytest.mark.parametrize("steps", [1, 8, 16])
def test_diffusion_generate_is_deterministic_for_a_seed_and_decodes(steps, kind):
    model = diffusion_model(kind)
    runs = [
        diffusion_generate(model, b"Hi", 20, GenerationOptions(diffusion_steps=steps, seed=seed))
        for seed in (3, 3, 4)
    ]
    assert torch.equal(runs[0].bits, runs[1].bits)
    assert not torch.equal(runs[0].bits, runs[2].bits)
    assert decode_bits(runs[0].bits, errors="replace")[1] == 0
    assert len(runs[0].bits) == 20 * FRAME_BITS


@pytest.mark.parametrize("kind", ["hierarchical", "frame"])
def test_choice_temperature_randomises_the_order_bits_are_filled_in(kind):
    """Greedy draws: with pure confidence order (τ = 0) the seed cannot matter; with Gumbel noise
    on the confidence the order, and so what later bits are conditioned on, changes with it."""
    model = diffusion_model(kind)

    def greedy(choice_temperature, seed):
        options = GenerationOptions(
            diffusion_steps=8, temperature=0, choice_temperature=choice_temperature, seed=seed
        )
        return diffusion_generate(model, b"", 24, options).bits

    assert all(torch.equal(greedy(0.0, 0), greedy(0.0, seed)) for seed in (1, 2, 3))
    assert not all(torch.equal(greedy(100.0, 0), greedy(100.0, seed)) for seed in (1, 2, 3))
    with pytest.raises(BitLMError, match="choice_temperature"):
        greedy(-1.0, 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("remask", [False, True])
def test_prompts_denoised_together_get_their_text_alone(kind, remask):
    """Prompts of different lengths, 20 bytes in an 8-byte window (windows of different
    layouts, so rows split and join groups), each with its own seed and one with a suffix."""
    model = diffusion_model(kind, max_seq_len=72).eval()
    prompts = [b"", b"Hi", b"The quick brown fox", b"ab"]
    options = [
        GenerationOptions(diffusion_steps=4, seed=seed, remask=remask) for seed in range(3)
    ] + [GenerationOptions(diffusion_steps=4, seed=9, remask=remask, suffix=b"xyz")]
    lengths = [20, 20, 20, 4]
    together = sample_many(model, prompts[:3], 20, options[:3])
    infill = sample_many(model, prompts, 4, options)
    for prompt, option, n, got in zip(
        prompts, options, lengths, together + infill[3:], strict=True
    ):
        alone = sample(model, prompt, n, option)
        assert torch.equal(got.bits, alone.bits) and got.parity_repairs == alone.parity_repairs
        assert decode_bits(got.bits, errors="replace")[1] == 0


def test_generation_longer_than_the_window_continues_window_by_window():
    model = diffusion_model(max_seq_len=72)  # 8 bytes of context
    out = diffusion_generate(model, b"abcdef", 30, GenerationOptions(diffusion_steps=2))
    assert len(out.bits) == 30 * FRAME_BITS
    assert decode_bits(out.bits, errors="replace")[1] == 0


def test_greedy_infilling_by_a_trained_denoiser_beats_chance_on_real_text(tmp_path):
    model = _fit_diffusion(tmp_path, steps=120).model
    text = ENGLISH.encode()[:32]
    truth = bytes_to_bits(text[12:20]).view(-1, FRAME_BITS)[:, :DATA_BITS]
    options = GenerationOptions(suffix=text[20:], diffusion_steps=8, temperature=0)
    out = diffusion_generate(model, text[:12], 8, options)
    filled = out.bits.view(-1, FRAME_BITS)[:, :DATA_BITS]
    assert (filled == truth).float().mean() > 0.7


def test_infilling_that_does_not_fit_the_window_is_refused():
    with pytest.raises(BitLMError, match="do not fit"):
        diffusion_generate(diffusion_model(), b"", 30, GenerationOptions(suffix=b"0123456789"))


def test_sampling_refuses_a_mode_the_model_was_not_trained_for():
    causal = build_model(ModelConfig(**TINY))
    with pytest.raises(BitLMError, match=r"trained with model\.mode=causal"):
        sample(causal, b"", 4, GenerationOptions(mode="diffusion"))
    with pytest.raises(BitLMError, match="infilling"):
        sample(causal, b"", 4, GenerationOptions(suffix=b"x"))
    with pytest.raises(BitLMError, match=r"needs a model trained with model\.mode=diffusion"):
        diffusion_generate(causal, b"", 4)


def test_sampling_stops_a_diffusion_sample_at_the_stop_string():
    model = diffusion_model()
    full = sample(model, b"", 20, GenerationOptions(seed=0))
    text = decode_bits(full.bits, errors="replace")[0]
    stop = text[5:7]
    cut = sample(model, b"", 20, GenerationOptions(stop=stop, seed=0))
    assert decode_bits(cut.bits, errors="replace")[0] == text[: text.find(stop)]


def test_safe_sampling_falls_back_to_the_diffusion_model(monkeypatch):
    causal = build_model(ModelConfig(**TINY))
    fallback = diffusion_model()
    verdicts = iter([False, True])

    def judge(model, bits, **_):
        assert model is causal  # every sample is judged by the primary model
        return None, {"safe": next(verdicts)}

    monkeypatch.setattr("bitlm.generation.safety.hil_safe_inference", judge)
    options = GenerationOptions(diffusion_steps=4, top_p=0.9)
    result = safe_sample_with_retry(
        causal, b"ab", 6, options, fallback=fallback, sleep=lambda s: None
    )  # top_p is a causal option: the causal attempt takes it, the fallback does not
    assert result["attempts"] == 2 and result["mode"] == "diffusion"
    assert len(result["bits"]) == 6 * FRAME_BITS
    with pytest.raises(BitLMError, match=r"fallback model must be a model\.mode=diffusion"):
        safe_sample_with_retry(causal, b"", 4, fallback=causal)
    with pytest.raises(BitLMError, match="cannot sample in mode=diffusion"):
        safe_sample_with_retry(causal, b"", 4, GenerationOptions(mode="diffusion"))


def test_diffusion_telemetry_reads_frame_predictions_and_kcs_losses_are_refused():
    module = BitLMModule(ModelConfig(mode="diffusion", **TINY))
    bits = bytes_to_bits(ENGLISH.encode()[:64]).view(2, -1)
    changed = bits.clone()
    changed[0, :FRAME_BITS] ^= 1  # a frame's own bits do not move its telemetry predictions
    module.eval()
    predictions = [
        module.objective.validation_step(module.model, b, 0).predictions for b in (bits, changed)
    ]
    first, second = predictions
    assert torch.allclose(first[0, :FRAME_BITS], second[0, :FRAME_BITS])
    assert not torch.allclose(first[0, FRAME_BITS:], second[0, FRAME_BITS:])
    with pytest.raises(BitLMError, match="trained on masked bits only"):
        BitLMModule(ModelConfig(mode="diffusion", **TINY), lambda_S=0.1)


# --- training -----------------------------------------------------------------------------


def _fit_diffusion(tmp_path, steps: int) -> BitLMModule:
    L.seed_everything(0)
    module = BitLMModule(
        ModelConfig(mode="diffusion", **TINY),
        optimizer={"lr": 0.003},
        scheduler={"warmup_steps": 5},
    )
    datamodule = BitDataModule(seq_len=288, batch_size=8, cache_dir=str(tmp_path))
    quiet_trainer(max_steps=steps, limit_val_batches=0).fit(module, datamodule=datamodule)
    return module


@pytest.mark.parametrize("trunk", TRUNKS)
def test_tiny_diffusion_training_lowers_the_denoising_loss_and_the_bound(tmp_path, trunk):
    L.seed_everything(0)
    config = ModelConfig(mode="diffusion", trunk=trunk, **TINY)
    module = BitLMModule(config, optimizer={"lr": 0.003}, scheduler={"warmup_steps": 5})
    datamodule = BitDataModule(seq_len=288, batch_size=8, cache_dir=str(tmp_path))
    trainer = quiet_trainer(max_steps=80, limit_val_batches=4)
    before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.fit(module, datamodule=datamodule)
    after = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    assert before["val/bpb"] > 8.5  # ~9 bits per 9-bit frame for a model that knows nothing
    assert after["val/loss"] < before["val/loss"] - 0.1, (before, after)
    assert after["val/bpb"] < before["val/bpb"] - 1.0, (before, after)
    assert after["val/bit_acc"] > 0.6


# --- curriculum ---------------------------------------------------------------------------


def test_curriculum_values_at_known_steps():
    linear = DiffusionCurriculum(start=1.0, end=0.2, steps=100)
    assert [linear.value(s) for s in (0, 50, 100, 200)] == pytest.approx([1, 0.6, 0.2, 0.2])
    cosine = DiffusionCurriculum(start=1.0, end=0.2, shape="cosine", steps=100)
    assert [cosine.value(s) for s in (0, 25, 50, 100)] == pytest.approx(
        [1, 1 - 0.8 * (1 - math.cos(math.pi / 4)) / 2, 0.6, 0.2]
    )


def test_curriculum_state_round_trips():
    source = DiffusionCurriculum(start=0.9, end=0.3, shape="cosine", steps=77)
    target = DiffusionCurriculum()
    target.load_state_dict(source.state_dict())
    assert target.state_dict() == source.state_dict()
    assert target.value(40) == source.value(40)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(end=0.0), "start and end"),
        (dict(shape="exp"), "shape must be one of"),
        (dict(steps=0), "positive integer"),
    ],
)
def test_curriculum_refuses_bad_settings(kwargs, message):
    with pytest.raises(BitLMError, match=message):
        DiffusionCurriculum(**kwargs)


class _RecordNoise(L.Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.levels: dict[int, float] = {}
        self.stop_at = stop_at

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.levels[trainer.global_step] = pl_module.knobs.noise_level
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def test_curriculum_resumes_exactly_from_a_checkpoint(tmp_path):
    def run(record, ckpt_path=None, max_steps=12):
        L.seed_everything(0)
        module = BitLMModule(ModelConfig(mode="diffusion", **TINY), scheduler={"warmup_steps": 2})
        datamodule = BitDataModule(seq_len=288, batch_size=4, cache_dir=str(tmp_path))
        trainer = quiet_trainer(
            max_steps=max_steps,
            limit_val_batches=0,
            callbacks=[DiffusionCurriculum(end=0.1), record],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return trainer

    whole = _RecordNoise()
    run(whole)
    interrupted = run(_RecordNoise(stop_at=5))
    interrupted.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = _RecordNoise()
    run(resumed, tmp_path / "mid.ckpt", max_steps=12)
    assert resumed.levels == {s: whole.levels[s] for s in range(6, 13)}
    # steps were resolved from the first run's max_steps and restored, not re-read
    later = _RecordNoise()
    run(later, tmp_path / "mid.ckpt", max_steps=8)
    assert later.levels == {s: whole.levels[s] for s in range(6, 9)}


def test_curriculum_refuses_a_causal_model(tmp_path):
    module = BitLMModule(ModelConfig(**TINY))
    datamodule = BitDataModule(seq_len=288, batch_size=4, cache_dir=str(tmp_path))
    trainer = quiet_trainer(max_steps=1, callbacks=[DiffusionCurriculum()])
    with pytest.raises(BitLMError, match=r"model\.mode=diffusion"):
        trainer.fit(module, datamodule=datamodule)


# --- commands -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusion_run(run_cli, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    run_dir = root / "run"
    result = run_cli(
        "train",
        "experiment=diffusion",
        "callbacks=diffusion",  # the noise curriculum on the frame model
        *TINY_TRAIN,
        f"hydra.run.dir={run_dir}",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_train_diffusion_experiment_logs_the_bound_and_the_curriculum(diffusion_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, result = diffusion_run
    assert 0 < result.json["val_bpb"] < 9.5
    tags = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/bit_acc", "train/noise_level", "val/bpb", "val/bit_acc"} <= tags


def test_generate_diffusion_infills_between_prompt_and_suffix(diffusion_run, run_cli, tmp_path):
    run_dir, _ = diffusion_run
    args = (
        f"ckpt_path={run_dir / 'model'}",
        "mode=diffusion",
        "diffusion_steps=16",
        "prompt=It was a ",
        "suffix= cold day",
        "max_new_bytes=6",
    )
    first = run_cli("generate", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.json
    assert out["mode"] == "diffusion" and out["bytes"] == 6 and out["parity_errors"] == 0
    assert 0 <= out["parity_repairs"] <= 6
    assert run_cli("generate", *args, cwd=tmp_path).json == out  # seeded: deterministic


def test_eval_of_a_diffusion_model_reports_the_bound_and_denoising(
    diffusion_run, run_cli, english_file
):
    run_dir, _ = diffusion_run
    result = run_cli(
        "eval",
        f"ckpt_path={run_dir / 'model'}",
        f"files=[{english_file}]",
        "noise_levels=[0.25,1.0]",
        cwd=english_file.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.json
    assert out["bpb_is_upper_bound"] is True
    assert 0 < out["bpb"] < 9.5
    assert set(out["denoising"]) == {"0.25", "1"}
    for level in out["denoising"].values():
        assert 0.5 < level["bit_accuracy"] <= 1 and level["loss"] > 0


def test_generate_refuses_diffusion_mode_for_a_causal_model(trained_run, refused, tmp_path):

    run_dir, _ = trained_run
    model = f"ckpt_path={run_dir / 'model'}"
    result = refused("generate", model, "mode=diffusion", cwd=tmp_path)
    assert_user_error(result, "trained with model.mode=causal", "experiment=diffusion")
    result = refused("generate", model, "suffix=abc", cwd=tmp_path)
    assert_user_error(result, "infilling")


def test_eval_refuses_bad_noise_levels(tmp_path, refused):

    folder = tmp_path / "model"
    save_pretrained(diffusion_model(), folder)
    (tmp_path / "a.txt").write_text(ENGLISH)
    result = refused(
        "eval", f"ckpt_path={folder}", "files=[a.txt]", "noise_levels=[0,0.5]", cwd=tmp_path
    )
    assert_user_error(result, "noise_levels must be numbers in (0, 1]")


def test_data_bits_only_count_in_denoising_accuracy():
    from bitlm.objectives.denoising import data_bit_mask

    masked = torch.ones(1, 18, dtype=torch.bool)
    data = data_bit_mask(masked)
    assert data.sum() == 2 * DATA_BITS
    assert not data[0, 8] and not data[0, 17]


@pytest.mark.parametrize("trunk", TRUNKS)
def test_frame_predictions_never_see_the_frame_they_predict(trunk):
    from bitlm.model.noise import frame_predictions

    model = diffusion_model(trunk).eval()
    bits = bytes_to_bits(b"abcdefgh").long()[None]
    changed = bits.clone()
    changed[0, 9 * 3 : 9 * 4] ^= 1  # rewrite frame 3 entirely
    before, after = frame_predictions(model, bits), frame_predictions(model, changed)
    frame = slice(9 * 3, 9 * 4)
    torch.testing.assert_close(before[0, frame], after[0, frame])
    assert not torch.allclose(before[0, 9 * 2 : 9 * 3], after[0, 9 * 2 : 9 * 3])


# --- frame diffusion: masked frames, the continuous-time bound, adaptation ------------------


def test_a_frame_model_hides_what_it_is_told_and_scores_a_hidden_byte_exactly():
    """Rewriting a hidden frame changes no prediction outside it, nor its first bit; and the
    in-frame decoder's 256 byte probabilities of a hidden frame sum to 1 (an exact likelihood)."""
    model = diffusion_model("frame").eval()
    bits = bytes_to_bits(b"abcdefgh").long().repeat(256, 1)
    frames = bits.view(256, 8, FRAME_BITS)
    frames[:, 3] = bytes_to_bits(bytes(range(256))).view(256, FRAME_BITS)  # frame 3 = every byte
    hidden = torch.zeros(256, 8, dtype=torch.bool)
    hidden[:, 3] = True
    with torch.no_grad():
        logits, _ = model(bits, causal=False, hidden=hidden)
    per_frame = logits.view(256, 8, FRAME_BITS, 2)
    torch.testing.assert_close(
        per_frame[:, [0, 1, 2, 4, 5, 6, 7]],
        per_frame[:1, [0, 1, 2, 4, 5, 6, 7]].expand(256, -1, -1, -1),
    )
    torch.testing.assert_close(per_frame[:, 3, 0], per_frame[:1, 3, 0].expand(256, -1))
    log_p = (
        -torch.nn.functional.cross_entropy(
            per_frame[:, 3].flatten(0, 1), frames[:, 3].flatten(), reduction="none"
        )
        .view(256, FRAME_BITS)
        .sum(1)
    )
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-5)


def test_a_frame_model_is_given_the_hidden_frames_and_a_bit_model_is_not():
    bits = torch.zeros(1, 18, dtype=torch.long)
    with pytest.raises(BitLMError, match="hidden"):
        diffusion_model("frame")(bits, causal=False)
    with pytest.raises(BitLMError, match="hidden"):
        diffusion_model("hierarchical")(
            bits, causal=False, hidden=torch.zeros(1, 2, dtype=torch.bool)
        )


def test_a_causal_model_becomes_a_frame_diffusion_model_with_every_weight():
    from bitlm.model.expand import grow_to

    causal = build_model(ModelConfig(trunk="hierarchical", **TINY))
    target = ModelConfig(trunk="hierarchical", mode="diffusion", diffusion_unit="frame", **TINY)
    adapted = grow_to(causal, target).model
    assert adapted.config.mode == "diffusion"
    state, before = adapted.state_dict(), causal.state_dict()
    assert state.keys() == before.keys()
    assert all(torch.equal(state[k], before[k]) for k in state)
    bit_diffusion = ModelConfig(trunk="hierarchical", mode="diffusion", **TINY)
    with pytest.raises(BitLMError, match="different architecture"):
        grow_to(causal, bit_diffusion)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(trunk="flat", mode="diffusion", diffusion_unit="frame"), "diffusion_unit=frame"),
        (dict(trunk="hierarchical", diffusion_unit="frame"), "diffusion_unit=frame"),
        (dict(trunk="hierarchical", mode="diffusion", diffusion_unit="byte"), "must be one of"),
    ],
)
def test_bad_diffusion_units_are_refused(options, message):
    with pytest.raises(BitLMError, match=message):
        ModelConfig(**options)


def test_configs_written_before_frame_diffusion_load_as_bit_diffusion():
    saved = {"trunk": "hierarchical", "mode": "diffusion", **TINY}  # no diffusion_unit key
    assert ModelConfig.from_dict(saved).diffusion_unit == "bit"


def test_noise_times_are_low_discrepancy():
    """One time in each of the B strata of [0, ν): the batch covers the noise levels evenly."""
    t = sample_noise_times(16, 0.5, torch.Generator().manual_seed(3))
    strata = (t / 0.5 * 16).floor().long()
    assert strata.tolist() == list(range(16))


@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
def test_rate_derivative_matches_finite_differences(schedule):
    t = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64)
    h = 1e-5
    numeric = (corruption_rate(schedule, t + h).double() - corruption_rate(schedule, t - h)) / (
        2 * h
    )
    torch.testing.assert_close(rate_derivative(schedule, t).double(), numeric, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_the_elbo_loss_of_a_model_that_knows_nothing_is_its_bound(kind):
    """Logits 0: every masked unit costs its bits · ln 2 nats, so the continuous-time bound per
    byte is 8 ln 2 (frame) or 9 ln 2 (bit) in expectation; the mean weighting gives ln 2 per bit
    exactly."""
    model = diffusion_model(kind)
    torch.nn.init.zeros_(model.head.weight)
    text = bytes(torch.randint(32, 127, (64 * 32,), generator=torch.Generator().manual_seed(0)))
    bits = bytes_to_bits(text).view(64, -1)
    elbo, mean = DiffusionObjective(None, "elbo"), DiffusionObjective(None, "mean")
    torch.manual_seed(0)
    losses = [elbo.training_step(model, bits, Knobs()).loss.item() for _ in range(20)]
    predicted = DATA_BITS if kind == "frame" else FRAME_BITS
    assert sum(losses) / len(losses) == pytest.approx(predicted * math.log(2), rel=0.05)
    mean_loss = mean.training_step(model, bits, Knobs()).loss.item()
    assert mean_loss == pytest.approx(math.log(2) * predicted / FRAME_BITS, rel=0.02)


def test_an_unknown_weighting_is_refused():
    with pytest.raises(BitLMError, match="diffusion_weighting"):
        DiffusionObjective(4, "uniform")


def test_frame_infilling_reads_the_whole_suffix_and_fits_one_frame_less():
    model = diffusion_model("frame", max_seq_len=9 * 16)
    out = diffusion_generate(model, b"ab", 6, GenerationOptions(suffix=b"012345789"))
    assert len(out.bits) == 6 * FRAME_BITS and out.parity_repairs == 0
    with pytest.raises(BitLMError, match="do not fit"):
        diffusion_generate(model, b"", 7, GenerationOptions(suffix=b"012345789"))
