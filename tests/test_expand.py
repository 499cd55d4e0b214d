"""Function-preserving growth (bitlm.model.expand), the growth LR schedule, and the adaptive
expansion callback under a real Lightning Trainer (growth order, limits, optimizer, resume)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from bitlm.core.errors import BitLMError
from bitlm.io import load_model
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.model.expand import carry_optimizer_state, grow_to
from bitlm.training.callbacks.adaptive_expansion import AdaptiveExpansion
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from bitlm.training.optim import growth_lr_factor
from tests.conftest import TINY_TRAIN, assert_user_error, quiet_trainer
from tests.test_configs import _compose

BASE = ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=72)
VARIANTS = {
    "flat": {},
    "plain": {"reversible": False},
    "hierarchical": {"trunk": "hierarchical"},
    "local-transformer": {"trunk": "hierarchical", "local_decoder": "transformer"},
    "shared-frames": {"trunk": "hierarchical", "frame_embedding": "both", "tree_head": "prefix"},
    "byte": {"unit": "byte"},
    "diffusion": {"mode": "diffusion"},
    "act": {"use_act": True},
}
GROWTHS = {
    "depth": {"n_layers": 5},
    "width": {"d_model": 64, "n_heads": 4, "d_ff": 256},
    "width3-ff": {"d_model": 96, "n_heads": 6, "d_ff": 400},
    "context": {"max_seq_len": 144},
    "all": {"n_layers": 3, "d_model": 64, "n_heads": 4, "d_ff": 256, "max_seq_len": 144},
}


def _trained_like(config: ModelConfig) -> torch.nn.Module:
    """A model whose weights are not at initialisation (zero-init parts perturbed too)."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("growth", GROWTHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_grown_model_gives_the_same_logits(variant, growth):
    config = dataclasses.replace(BASE, **VARIANTS[variant])
    if config.use_act and "n_layers" in GROWTHS[growth]:
        pytest.skip("ACT models do not grow deeper (test_refused_growths)")
    model = _trained_like(config)
    bits = torch.randint(0, 2, (3, 72))
    grown = grow_to(model, dataclasses.replace(config, **GROWTHS[growth])).model
    torch.testing.assert_close(grown(bits)[0], model(bits)[0], atol=1e-5, rtol=0)
    assert not grown.training  # the old model's mode
    if "max_seq_len" in GROWTHS[growth]:  # and it reads the longer context
        assert grown(torch.randint(0, 2, (1, 144)))[0].shape[1] == (
            144 if variant != "byte" else 16
        )


def test_grown_width_copies_differ_after_one_update():
    """The readers' random shares break the copies' symmetry: the copies of a residual feature
    receive different gradients, so training can make them different features."""
    model = _trained_like(BASE).train()
    grown = grow_to(model, dataclasses.replace(BASE, d_model=64, n_heads=4, d_ff=256)).model
    bits = torch.randint(0, 2, (4, 72))
    grown(bits)[0].logsumexp(-1).mean().backward()
    grad = grown.trunk.blocks[0].g.proj.weight.grad  # rows write residual feature i and i + 32
    assert not torch.allclose(grad[:32], grad[32:])


def test_a_fractional_width_warns_that_it_is_not_exact(caplog):
    model = _trained_like(BASE)
    bits = torch.randint(0, 2, (2, 72))
    with caplog.at_level(logging.WARNING, logger="bitlm.model.expand"):
        grown = grow_to(model, dataclasses.replace(BASE, d_model=48, n_heads=3, d_ff=192)).model
    assert "not a whole multiple" in caplog.text
    difference = (grown(bits)[0] - model(bits)[0]).abs().max()
    assert 1e-4 < difference < 1.0  # close, not equal: the LayerNorm statistics moved


@pytest.mark.parametrize(
    ("base", "target", "message"),
    [
        ({}, {"n_layers": 1}, "would shrink"),
        ({}, {"d_model": 64}, "set model.n_heads=4"),
        ({}, {"trunk": "hierarchical"}, "trunk: 'flat' → 'hierarchical'"),
        ({}, {"reversible": False}, "different architecture"),
        ({"use_act": True}, {"n_layers": 3}, "cannot grow deeper"),
    ],
)
def test_refused_growths(base, target, message):
    config = dataclasses.replace(BASE, **base)
    with pytest.raises(BitLMError, match=message):
        grow_to(build_model(config), dataclasses.replace(config, **target))


def _adam_step(model: torch.nn.Module, optimizer, bits) -> None:
    optimizer.zero_grad()
    model(bits)[0].logsumexp(-1).mean().backward()
    optimizer.step()


def test_optimizer_state_follows_the_parameters():
    """Deepened: the old parameters keep their Adam state, so one more step moves them exactly
    as it moves them in the old model (the new blocks are identities with zero projections, so
    the old parameters' gradients are unchanged); the new blocks start without state. Widened:
    a reader's copied moments equal the old column's."""
    bits = torch.randint(0, 2, (4, 72))
    model = _trained_like(BASE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        _adam_step(model, optimizer, bits)
    growth = grow_to(model, dataclasses.replace(BASE, n_layers=4))
    grown_optimizer = torch.optim.AdamW(growth.model.parameters(), lr=1e-2)
    carry_optimizer_state(optimizer, model, grown_optimizer, growth)
    new_block = growth.model.trunk.blocks[3].f.attn.qkv.weight
    assert new_block not in grown_optimizer.state
    _adam_step(model, optimizer, bits)
    _adam_step(growth.model, grown_optimizer, bits)
    grown_params = dict(growth.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grown_params[name], p, atol=1e-6, rtol=0)

    wide = grow_to(model, dataclasses.replace(BASE, d_model=64, n_heads=4, d_ff=256))
    wide_optimizer = torch.optim.AdamW(wide.model.parameters(), lr=1e-2)
    carry_optimizer_state(optimizer, model, wide_optimizer, wide)
    old_state = optimizer.state[model.head.weight]
    new_state = wide_optimizer.state[wide.model.head.weight]  # (2, 64) reads the residual
    torch.testing.assert_close(new_state["exp_avg"][:, 32:], old_state["exp_avg"])
    assert new_state["step"] == old_state["step"]


def test_growth_lr_factor_scales_and_rewarms():
    growths = ({"step": 100, "lr_scale": 1 / math.sqrt(2), "warmup_steps": 100},)
    assert growth_lr_factor(99, growths) == 1.0
    assert growth_lr_factor(100, growths) == pytest.approx(0.01 / math.sqrt(2))
    assert growth_lr_factor(149, growths) == pytest.approx(0.5 / math.sqrt(2))
    assert growth_lr_factor(199, growths) == pytest.approx(1 / math.sqrt(2))
    twice = (*growths, {"step": 300, "lr_scale": 1 / math.sqrt(2), "warmup_steps": 10})
    assert growth_lr_factor(250, twice) == pytest.approx(1 / math.sqrt(2))
    assert growth_lr_factor(400, twice) == pytest.approx(0.5)


def _expanding_fit(tmp_path, cache_dir, steps: int, ckpt_path=None, **expansion):
    """A tiny model trained ``steps`` steps under AdaptiveExpansion with every validation a
    plateau (min_delta 100), validating every 10 steps; a checkpoint every 25 steps."""
    L.seed_everything(0)
    module = BitLMModule(
        BASE, optimizer={"lr": 0.003}, scheduler={"warmup_steps": 2, "min_lr_ratio": 1.0}
    )
    datamodule = BitDataModule(
        seq_len=expansion.get("max_seq_len") or 72, batch_size=4, cache_dir=str(cache_dir)
    )
    settings = {"min_delta": 100.0, "patience": 1, "warmup_steps": 5} | expansion
    callback = AdaptiveExpansion(**settings)
    saves = ModelCheckpoint(
        tmp_path / "ckpt", every_n_train_steps=25, save_top_k=-1, save_last=False
    )
    trainer = quiet_trainer(
        max_steps=steps,
        val_check_interval=10,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[callback, saves],
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, trainer


def test_expansion_grows_in_order_up_to_the_limits(tmp_path, cache_dir):
    module, trainer = _expanding_fit(
        tmp_path,
        cache_dir,
        60,
        order=("depth", "width", "context"),
        max_layers=4,
        max_d_model=64,
        max_seq_len=144,
    )
    config = module.model.config
    assert (config.n_layers, config.d_model, config.n_heads, config.max_seq_len) == (4, 64, 4, 144)
    # the first validation sets the best value; each later one is a plateau, until every kind
    # is at its limit
    assert [g["step"] for g in module.growths] == [20, 30, 40]
    optimizer = trainer.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.parameters()
    }
    # the LR: cosine at its floor (min_lr_ratio 1) × (1/√2)³ once the last warm-up is over
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 2**-1.5)
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "expansion/d_model" in metrics and "expansion/parameters" in metrics


def test_a_run_resumed_after_a_growth_equals_the_uninterrupted_run(tmp_path, cache_dir):
    grow = {"order": ("depth", "width"), "max_layers": 4, "max_d_model": 64}
    whole, _ = _expanding_fit(tmp_path / "whole", cache_dir, 40, **grow)
    checkpoint = tmp_path / "whole" / "ckpt" / "epoch=0-step=25.ckpt"
    resumed, _ = _expanding_fit(tmp_path / "resumed", cache_dir, 40, checkpoint, **grow)
    assert resumed.model.config == whole.model.config
    assert resumed.growths == whole.growths and len(whole.growths) == 2
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-6, rtol=0)


def test_context_growth_needs_windows_as_long_as_its_limit(tmp_path, cache_dir):
    L.seed_everything(0)
    datamodule = BitDataModule(seq_len=72, batch_size=4, cache_dir=str(cache_dir))
    trainer = quiet_trainer(max_steps=1, callbacks=[AdaptiveExpansion(max_seq_len=144)])
    with pytest.raises(BitLMError, match=r"set data\.seq_len=144"):
        trainer.fit(BitLMModule(BASE), datamodule=datamodule)


def test_progressive_experiment_starts_at_a_quarter_and_grows_to_small():
    cfg = _compose("train", "experiment=progressive")
    start = instantiate(cfg.model)
    callback = instantiate(cfg.callbacks.adaptive_expansion)
    final = dataclasses.replace(start)
    while (grown := callback.next_config(final)) is not None:
        final = grown
    assert (start.n_layers, start.d_model) == (2, 96)
    assert final == instantiate(_compose("train").model)  # exactly model=small


def test_extend_context_finetunes_and_reports_bpb_at_both_lengths(run_cli, trained_run, tmp_path):
    run_dir, _ = trained_run
    result = run_cli(
        "train",
        "experiment=extend_context",
        f"ckpt_path={run_dir / 'model'}",
        *TINY_TRAIN,
        "model.max_seq_len=576",
        "trainer.max_steps=30",
        f"hydra.run.dir={tmp_path / 'extended'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 30  # a fresh run from the model's weights, not a resume
    by_context = summary["val_bpb_by_context"]
    assert set(by_context["before"]) == set(by_context["after"]) == {"288", "576"}
    assert by_context["after"]["576"] == pytest.approx(summary["val_bpb"])
    # fine-tuning at 576 bits keeps the short context close (here it improves it)
    assert by_context["after"]["288"] < by_context["before"]["288"] + 0.1
    assert load_model(tmp_path / "extended" / "model").config.max_seq_len == 576


def test_finetune_needs_a_model_and_a_growable_architecture(refused, trained_run, tmp_path):
    run_dir, _ = trained_run
    missing = refused("train", "experiment=extend_context", *TINY_TRAIN, cwd=tmp_path)
    other = refused(
        "train",
        "experiment=extend_context",
        f"ckpt_path={run_dir / 'model'}",
        *TINY_TRAIN,
        "model.trunk=flat",  # trained hierarchical
        cwd=tmp_path,
    )
    assert_user_error(missing, "finetune=true starts from ckpt_path")
    assert_user_error(other, "trunk: 'hierarchical' → 'flat'")
