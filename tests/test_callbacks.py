"""The safety gate callback (warn, stop, rollback, drift, ranks, state) and the TensorBoard
telemetry views, under a real Lightning Trainer."""

from __future__ import annotations

import dataclasses
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bitlm.bench.measure import corpus_batches
from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig
from bitlm.training.callbacks.adaptive_expansion import AdaptiveExpansion
from bitlm.training.callbacks.safety_gate import SafetyGateCallback
from bitlm.training.callbacks.telemetry_monitor import TelemetryMonitor, attention_image
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import quiet_trainer

CONFIG = ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=72, trunk="hierarchical")


class ScriptedTelemetry(BitLMModule):
    """Logs the safety gate's inputs from a script, ``telemetry/C`` = ``c[step]``, instead of
    measuring them, so a test decides when the gate fires. Rank r uses ``c[r][step]``."""

    def __init__(self, c: list[list[float]], k: list[float] | None = None) -> None:
        super().__init__(
            CONFIG, optimizer={"lr": 1e-2}, scheduler={"warmup_steps": 1}, telemetry=False
        )
        self.c, self.k = c, k

    def training_step(self, bits, batch_idx):
        loss = super().training_step(bits, batch_idx)
        step = self.global_step
        self.log("telemetry/C", self.c[self.global_rank][step])
        self.log("telemetry/S", 1.0)
        self.log("telemetry/K", self.k[step] if self.k else 0.5)
        return loss


class Recorder(L.Callback):
    """Copies the weights and optimiser state at the end of every batch."""

    def __init__(self) -> None:
        self.weights, self.adam, self.lr = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})
        state = trainer.optimizers[0].state_dict()["state"]
        self.adam.append({k: v["exp_avg"].clone() for k, v in state.items()})
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(module, callbacks, steps, tmp_path, **trainer_kwargs):
    trainer = quiet_trainer(
        max_steps=steps,
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        **trainer_kwargs,
    )
    batches = corpus_batches(steps, 4, CONFIG.max_seq_len)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def gate(**kwargs) -> SafetyGateCallback:
    return SafetyGateCallback(**{"burn_in": 0, "decay": 0.0, **kwargs})


def test_stop_ends_training_at_the_first_firing_step(tmp_path, caplog):
    callback = gate(action="stop")
    with caplog.at_level(logging.WARNING):
        trainer = fit(ScriptedTelemetry([[1, 1, 1, 0.2, 1, 1, 1, 1]]), [callback], 8, tmp_path)
    assert trainer.global_step == 4
    assert callback.fired == 1
    assert "safety gate fired at step 4" in caplog.text


def test_warn_counts_and_goes_on(tmp_path, caplog):
    callback = gate(action="warn")
    with caplog.at_level(logging.WARNING):
        trainer = fit(ScriptedTelemetry([[1, 0.1, 0.1, 1, 1, 0.2]]), [callback], 6, tmp_path)
    assert trainer.global_step == 6
    assert callback.fired == 3
    assert caplog.text.count("safety gate fired") == 3


def test_burn_in_and_ema_delay_the_firing(tmp_path):
    # decay 0.9 from EMA 1: C = 0 pulls it to 0.9, 0.81, …, 0.9^k ≤ 0.3 from k = 12 on
    callback = SafetyGateCallback(action="stop", burn_in=3)
    trainer = fit(ScriptedTelemetry([[1.0] + [0.0] * 19]), [callback], 20, tmp_path)
    assert trainer.global_step == 13


def test_rollback_restores_the_last_good_step_exactly_and_lowers_the_lr(tmp_path):
    callback = gate(action="rollback", snapshot_every_n_steps=1, lr_factor=0.5)
    recorder = Recorder()
    module = ScriptedTelemetry([[1, 1, 1, 1, 0.1, 1, 1]])
    trainer = fit(module, [callback, recorder], 7, tmp_path)
    assert callback.rollbacks == 1
    # batch 4 fired: its update is undone, weights and Adam moments are batch 3's, bit for bit
    for key, value in recorder.weights[3].items():
        assert torch.equal(recorder.weights[4][key], value), key
    for key, value in recorder.adam[3].items():
        assert torch.equal(recorder.adam[4][key], value)
    assert not torch.equal(
        recorder.weights[5]["model.head.weight"], recorder.weights[3]["model.head.weight"]
    )
    assert recorder.lr[4] == pytest.approx(recorder.lr[3] * 0.5)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs == pytest.approx([1e-2 * 0.5] * len(scheduler.base_lrs))
    assert callback.gate.steps == 2  # restarted after the rollback


class GrowAt(L.Callback):
    """Grows the model one block deeper after optimizer step ``step`` (AdaptiveExpansion.grow)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            deeper = dataclasses.replace(pl_module.model.config, n_layers=3)
            AdaptiveExpansion().grow(trainer, pl_module, deeper)


def test_rollback_after_a_growth_restores_a_snapshot_of_the_grown_model(tmp_path):
    """The snapshot taken before the model grew holds weights that fit no longer: it is dropped
    and a new one taken, so a later firing rolls back within the grown model."""
    callback = gate(action="rollback", snapshot_every_n_steps=100)
    module = ScriptedTelemetry([[0.9] * 4 + [0.0] + [0.9] * 3])
    fit(module, [GrowAt(3), callback], 6, tmp_path)
    assert callback.rollbacks == 1 and callback.snapshot["step"] == 3
    assert module.model.config.n_layers == 3


def test_rollback_before_any_judged_step_only_warns(tmp_path, caplog):
    callback = gate(action="rollback", burn_in=3)
    module = ScriptedTelemetry([[1, 1, 1, 0.1, 1]])  # fires at the first step after burn-in
    with caplog.at_level(logging.WARNING):
        trainer = fit(module, [callback], 5, tmp_path)
    assert callback.fired == 1 and callback.rollbacks == 0 and trainer.global_step == 5
    assert callback.snapshot is not None and callback.snapshot["step"] == 5


def test_drift_is_warned_and_counted(tmp_path, caplog):
    callback = gate(action="warn", drift_window=1, drift_threshold=0.2)
    k = [0.5, 0.5, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9]  # one move above 0.2: +0.3 at step 4
    with caplog.at_level(logging.WARNING):
        fit(ScriptedTelemetry([[1.0] * 8], k=k), [callback], 8, tmp_path)
    assert callback.drift_events == {"telemetry/K": 1, "telemetry/C": 0, "telemetry/S": 0}
    assert "telemetry/K moved +0.300" in caplog.text


def test_callback_state_survives_a_checkpoint(tmp_path):
    callback = gate(action="warn", drift_window=3)
    trainer = fit(ScriptedTelemetry([[1, 0.1, 1, 0.2, 1]]), [callback], 5, tmp_path)
    trainer.save_checkpoint(tmp_path / "gate.ckpt")
    saved = torch.load(tmp_path / "gate.ckpt", weights_only=True)["callbacks"]
    restored = gate(action="warn", drift_window=3)
    restored.load_state_dict(saved["SafetyGateCallback"])
    assert restored.state_dict() == callback.state_dict()
    assert restored.fired == 2 and restored.gate.steps == 5
    # the drift at step 3 (0.2 against 1.0 three steps before) restarted the window
    assert list(restored.drift.history["telemetry/C"]) == pytest.approx([0.2, 1])


def test_gate_without_telemetry_says_what_to_do(tmp_path):
    module = BitLMModule(CONFIG, telemetry=False)
    with pytest.raises(BitLMError, match="telemetry/C and telemetry/S"):
        fit(module, [gate()], 2, tmp_path)


def test_bad_gate_options_are_refused():
    with pytest.raises(BitLMError, match="action"):
        SafetyGateCallback(action="panic")
    with pytest.raises(BitLMError, match="decay"):
        SafetyGateCallback(decay=1.0)


class StepFile(L.Callback):
    """Writes the step each rank stopped at to ``directory/rank<r>``."""

    def __init__(self, directory) -> None:
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        (self.directory / f"rank{trainer.global_rank}").write_text(str(trainer.global_step))


def test_ranks_decide_together(tmp_path):
    # rank 0 sees C = 0.5, rank 1 sees 0.0 from step 2: only their mean (0.25) is below 0.3
    module = ScriptedTelemetry([[1, 1, 0.5, 0.5, 0.5, 0.5], [1, 1, 0.0, 0.0, 0.0, 0.0]])
    callbacks = [gate(action="stop"), StepFile(tmp_path)]
    fit(
        module,
        callbacks,
        6,
        tmp_path,
        strategy="ddp_spawn",
        devices=2,
        use_distributed_sampler=False,
    )
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["3", "3"]


def test_tensorboard_holds_images_histograms_telemetry_and_hparams(tmp_path):
    L.seed_everything(0)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=72, use_act=True)
    module = BitLMModule(config, scheduler={"warmup_steps": 1})
    datamodule = BitDataModule(seq_len=72, batch_size=4, cache_dir=str(tmp_path))
    logger = TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    trainer = quiet_trainer(
        max_steps=4,
        val_check_interval=2,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[TelemetryMonitor(every_n_steps=2, probe_size=2, sample_bytes=8)],
    )
    trainer.fit(module, datamodule=datamodule)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"attention/layer_0", "attention/layer_1"} <= set(tags["images"])
    assert {"activations/layer_0", "activations/layer_1", "halt_probs"} <= set(tags["histograms"])
    expected = {
        "telemetry/K",
        "telemetry/C",
        "telemetry/S",
        "telemetry/K_data",
        "telemetry/C_data",
        "telemetry/ponder_cost",
        "telemetry/layers_run",
        "telemetry/C_lz76_data",
        "telemetry/C_lz76_sample",
        "telemetry/K_sample",
        "telemetry/attention_entropy/layer_1",
        "telemetry/activation_rms/layer_1",
        "val/K",
        "val/C",
        "val/S",
        "val/bpb",
    }
    assert expected <= set(tags["scalars"])
    assert "sample/text_summary" in tags["tensors"]
    hparams = events.PluginTagToContent("hparams")
    assert b"val/bpb" in hparams["_hparams_/experiment"]
    assert b"module.optimizer.lr" in hparams["_hparams_/session_start_info"]
    assert [e.step for e in events.Images("attention/layer_0")] == [2, 4]


def test_attention_image_puts_heads_side_by_side_scaled_to_their_maximum():
    weights = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.2, 0.0], [0.1, 0.1]]])
    image = attention_image(weights)
    assert image.shape == (1, 2, 5)
    expected = torch.tensor([[[1.0, 0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.5, 0.5]]])
    torch.testing.assert_close(image, expected)
