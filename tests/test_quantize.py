"""Quantization: 4-bit QAT prepare → train → convert, int8/int4 exports that load and evaluate,
and the experiment=qat → bitlm-eval compare path."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from bitlm.core.errors import BitLMError
from bitlm.evaluation.bpb import model_bits
from bitlm.io import load_model, quantize, save_pretrained, stored_size
from bitlm.model import ModelConfig, build_model
from bitlm.training.callbacks.model_export import ModelExport
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import ENGLISH, TINY_TRAIN, quiet_trainer

TINY = dict(d_model=64, n_heads=2, n_layers=2, max_seq_len=288)


def _fake_quantized(model: torch.nn.Module) -> int:
    return sum(type(m).__name__ == "FakeQuantizedLinear" for m in model.modules())


@pytest.mark.parametrize("trunk", ["flat", "hierarchical"])
def test_qat_prepares_trains_and_converts_to_the_model_it_simulated(tmp_path, trunk):
    L.seed_everything(0)
    module = BitLMModule({**TINY, "trunk": trunk}, qat=True, scheduler={"warmup_steps": 2})
    trainer = quiet_trainer(max_steps=8, limit_val_batches=0)
    trainer.fit(module, datamodule=BitDataModule(seq_len=288, batch_size=4))
    assert _fake_quantized(module.model) >= 4 * 2  # the blocks' projections at least
    assert module.health.bad_steps == 0
    plain = build_model(module.model.config)
    plain.load_state_dict(module.model.state_dict())  # QAT adds no parameters or buffers
    bits = torch.randint(0, 2, (2, 288), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        simulated = module.model.eval()(bits)[0]
        converted = quantize(plain, "int4")(bits)[0]
    # the fake quantizers computed the same int4 groups and int8 activations as the kernels
    torch.testing.assert_close(converted, simulated, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_export_loads_evaluates_and_is_smaller(tmp_path, scheme):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, trunk="hierarchical")).eval()
    save_pretrained(model, tmp_path / "float")
    quantized = quantize(load_model(tmp_path / "float"), scheme)
    save_pretrained(quantized, tmp_path / scheme)
    loaded = load_model(tmp_path / scheme)
    bits = torch.randint(0, 2, (2, 288), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(bits)[0], quantized(bits)[0])  # saved exactly
        error = (loaded(bits)[0] - model(bits)[0]).abs().max()
    assert 0 < error < 0.5  # quantized, and close to the float model
    text = ENGLISH.encode() * 2
    assert model_bits(loaded, text, None, 4) == pytest.approx(
        model_bits(model, text, None, 4), rel=0.02
    )
    # int4 too: torchao's CPU layout keeps one 4-bit value per byte (experiments/scale)
    assert stored_size(tmp_path / scheme) < 0.4 * stored_size(tmp_path / "float")


def test_quantized_folder_without_its_weights_or_with_an_unknown_scheme_is_refused(tmp_path):
    model = build_model(ModelConfig(**TINY))
    save_pretrained(quantize(model, "int8"), tmp_path / "q")
    (tmp_path / "q" / "model.pt").unlink()
    with pytest.raises(BitLMError, match=r"model\.pt is missing"):
        load_model(tmp_path / "q")
    with pytest.raises(BitLMError, match="scheme must be one of"):
        quantize(model, "int2")
    with pytest.raises(BitLMError, match="unknown scheme"):
        ModelExport(tmp_path / "m", quantize=["fp8"])


def test_qat_experiment_exports_float_int8_and_int4_and_eval_compares_them(run_cli, tmp_path):
    result = run_cli(
        "train",
        *TINY_TRAIN,
        "experiment=qat",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = tmp_path / "text.txt"
    text.write_text(ENGLISH * 8)
    folders = [tmp_path / name for name in ("model", "model_int8", "model_int4")]
    scored = run_cli(
        "eval",
        f"ckpt_path={folders[0]}",
        f"compare=[{folders[1]},{folders[2]}]",
        f"files=[{text}]",
        cwd=tmp_path,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    report = scored.json
    assert report["quantization"] is None
    for folder, scheme in zip(folders[1:], ("int8", "int4"), strict=True):
        other = report["compare"][str(folder)]
        assert other["quantization"] == scheme
        assert other["size_bytes"] < 0.4 * report["size_bytes"]
        assert other["bpb"] == pytest.approx(report["bpb"], abs=0.15)
