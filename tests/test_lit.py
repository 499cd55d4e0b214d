"""BitLMModule + BitDataModule under a real Lightning Trainer."""

import lightning as L
import pytest

from bitlm.lit.datamodule import BitDataModule
from bitlm.lit.module import BitLMModule
from bitlm.model.config import ModelConfig


@pytest.mark.parametrize(
    "model",
    [
        dict(unit="bit", reversible=True),
        dict(unit="bit", reversible=False),
        dict(unit="bit", trunk="hierarchical"),
        dict(unit="byte", reversible=False),
    ],
    ids=["bit", "bit_plain", "hierarchical", "byte"],
)
def test_tiny_fit_lowers_validation_bpb(tmp_path, model):
    L.seed_everything(0)
    config = ModelConfig(d_model=64, n_heads=2, n_layers=2, max_seq_len=288, **model)
    module = BitLMModule(config, lr=3e-3, warmup_steps=5)
    datamodule = BitDataModule(seq_len=288, batch_size=8, cache_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=60,
        limit_val_batches=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/bpb"]
    trainer.fit(module, datamodule=datamodule)
    after = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/bpb"]
    assert before > 7.5  # an untrained model knows nothing: ~8 bits per byte
    assert after < before - 2.0, (before, after)


def test_hyperparameters_round_trip_through_a_checkpoint(tmp_path):
    module = BitLMModule({"d_model": 32, "n_heads": 2, "n_layers": 1, "max_seq_len": 36}, lr=5e-4)
    assert module.hparams["model"]["d_model"] == 32
    assert module.hparams["lr"] == 5e-4
    restored = BitLMModule(**module.hparams)
    assert restored.model.config == module.model.config
