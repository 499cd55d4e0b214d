"""BitLMModule + BitDataModule under a real Lightning Trainer."""

import lightning as L
import pytest
import torch

from bitlm.core.errors import BitLMError
from bitlm.io import save_pretrained
from bitlm.model.config import ModelConfig
from bitlm.model.flops import batch_flops
from bitlm.telemetry.metrics import marginal_reference, symbiosis
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import quiet_trainer


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
    module = BitLMModule(config, optimizer={"lr": 0.003}, scheduler={"warmup_steps": 5})
    datamodule = BitDataModule(seq_len=288, batch_size=8, cache_dir=str(tmp_path))
    trainer = quiet_trainer(max_steps=60, limit_val_batches=8)
    before = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/bpb"]
    trainer.fit(module, datamodule=datamodule)
    after = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/bpb"]
    assert before > 7.5  # an untrained model knows nothing: ~8 bits per byte
    assert after < before - 2.0, (before, after)


def test_hyperparameters_round_trip_through_a_checkpoint(tmp_path):
    module = BitLMModule(
        {"d_model": 32, "n_heads": 2, "n_layers": 1, "max_seq_len": 36}, optimizer={"lr": 0.0005}
    )
    assert module.hparams["model"]["d_model"] == 32
    assert module.hparams["optimizer"]["lr"] == 5e-4
    restored = BitLMModule(**module.hparams)
    assert restored.model.config == module.model.config


def _one_step(module, tmp_path):
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    datamodule = BitDataModule(seq_len=72, batch_size=4, cache_dir=str(tmp_path))
    L.seed_everything(0)
    trainer.fit(module, datamodule=datamodule)
    return trainer, datamodule


TELEMETRY_CONFIG = dict(d_model=32, n_heads=2, n_layers=1, max_seq_len=72)


def test_marginal_reference_comes_from_the_training_data_and_is_checkpointed(tmp_path):
    module = BitLMModule(TELEMETRY_CONFIG)
    trainer, datamodule = _one_step(module, tmp_path)
    expected = marginal_reference(datamodule.byte_counts())
    assert torch.equal(module.reference_marginal, expected)
    assert expected[0] < 0.05  # pydoc text is ASCII: the top bit is almost never set
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    state = torch.load(tmp_path / "m.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(state["reference_marginal"], expected)
    metrics = trainer.callback_metrics
    assert {"telemetry/K", "telemetry/C", "telemetry/S", "telemetry/K_data"} <= set(metrics)


def test_kcs_terms_add_to_the_training_loss(tmp_path):
    losses = []
    for lambdas in ({}, {"lambda_K": 5.0, "lambda_C": 5.0, "lambda_S": 5.0}):
        torch.manual_seed(0)
        trainer, _ = _one_step(BitLMModule(TELEMETRY_CONFIG, **lambdas), tmp_path)
        losses.append(trainer.callback_metrics["train/loss"].item())
    assert losses[1] > losses[0] + 0.1


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        ({}, {}, 0.02),  # a causal bit model: the default prior (experiments/generalization)
        ({}, {"lambda_S": 0.0}, 0.0),  # the first release's loss, one override away
        ({}, {"telemetry": False}, 0.0),
        ({"mode": "diffusion"}, {}, 0.0),  # no next-bit predictions to regularise
        ({"unit": "byte"}, {}, 0.0),
    ],
)
def test_the_symbiosis_prior_defaults_to_0_02_where_bits_are_predicted(model, options, expected):
    module = BitLMModule({**TELEMETRY_CONFIG, **model}, **options)
    assert module.hparams["lambda_S"] == expected
    if module.telemetry is not None:  # the loss term the training step adds
        assert module.telemetry.kcs.lambda_S == expected


def test_symbiosis_against_a_reference_model_of_the_same_weights_is_one(tmp_path):
    reference = BitLMModule(TELEMETRY_CONFIG)
    save_pretrained(reference.model, tmp_path / "ref")
    module = BitLMModule(
        TELEMETRY_CONFIG, symbiosis_reference="model", reference_model=str(tmp_path / "ref")
    )
    module.model.load_state_dict(reference.model.state_dict())
    bits = torch.randint(0, 2, (2, 72))
    logits, _ = module(bits)
    assert symbiosis(logits, module._reference(bits)).tolist() == pytest.approx([1.0, 1.0])
    assert not any(p.requires_grad for p in module.reference_model.parameters())
    module.train()
    assert not module.reference_model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(model=dict(unit="byte"), lambda_K=0.1), "byte-level baseline"),
        (dict(symbiosis_reference="corpus"), "'marginal' or 'model'"),
        (dict(symbiosis_reference="model"), "reference_model=PATH"),
        (dict(telemetry=False, lambda_S=0.1), "module.telemetry=true"),
    ],
)
def test_bad_telemetry_options_are_refused(kwargs, message):
    model = {**TELEMETRY_CONFIG, **kwargs.pop("model", {})}
    with pytest.raises(BitLMError, match=message):
        BitLMModule(model, **kwargs)


def _fit_steps(tmp_path, steps: int, precision: str = "32-true", **model) -> BitLMModule:
    L.seed_everything(0)
    config = ModelConfig(d_model=64, n_heads=2, n_layers=2, max_seq_len=288, **model)
    module = BitLMModule(config, scheduler={"warmup_steps": 2})
    datamodule = BitDataModule(seq_len=288, batch_size=4, cache_dir=str(tmp_path))
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, precision=precision)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    return module


def test_compiled_model_trains_like_eager_and_keeps_plain_parameter_names(tmp_path):
    compiled = _fit_steps(tmp_path / "compiled", 3, compile=True)
    eager = _fit_steps(tmp_path / "eager", 3)
    assert compiled.model._compiled_call_impl is not None  # compiled in place
    assert eager.model._compiled_call_impl is None
    saved = torch.load(tmp_path / "compiled" / "model.ckpt", weights_only=True)["state_dict"]
    assert set(saved) == set(eager.state_dict())  # no _orig_mod. prefixes
    for name, value in eager.model.state_dict().items():  # fused kernels: rounding differs
        torch.testing.assert_close(compiled.model.state_dict()[name], value, atol=1e-4, rtol=0)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_each_precision_trains_the_reversible_model(tmp_path, precision):
    """On CPU ``16-mixed`` runs as bf16 (Lightning warns); on a GPU as fp16 with loss scaling."""
    module = _fit_steps(tmp_path, 2, precision)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert module.health.bad_steps == 0


def test_flops_per_batch_counts_the_training_batch_after_setup(tmp_path):
    module = BitLMModule(TELEMETRY_CONFIG)
    assert module.flops_per_batch is None  # no batch shape before the trainer's setup
    _one_step(module, tmp_path)
    config = module.model.config
    module.train()
    assert module.flops_per_batch == batch_flops(config, 4, 72, training=True) > 0
    module.eval()
    assert module.flops_per_batch == batch_flops(config, 4, 72, training=False)
    assert module.example_input_array.shape == (4, 72)
