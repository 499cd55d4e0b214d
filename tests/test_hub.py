"""The exported folder and the Hugging Face Hub (``bitlm.io``): the save/load round trip,
strict loading, config.json and the model card, Hub errors without a network, and the upload
(``push_to_hub`` and the callback, against a local stand-in for the Hub)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bitlm import io as hub
from bitlm.core.bits import bytes_to_bits
from bitlm.core.errors import BitLMError
from bitlm.model import BitTransformerLM, HierarchicalBitLM, build_model
from bitlm.model.byte_baseline import ByteTransformerLM
from bitlm.model.config import ModelConfig

from .conftest import TINY_TRAIN, assert_user_error, quiet_trainer

CONFIGS = {
    "flat": ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=72),
    "hierarchical": ModelConfig(
        trunk="hierarchical", n_layers=2, d_model=32, n_heads=2, max_seq_len=72
    ),
    "byte": ModelConfig(unit="byte", n_layers=2, d_model=32, n_heads=2, max_seq_len=72),
    "shared-frames": ModelConfig(
        trunk="hierarchical",
        frame_embedding="both",
        tree_head="prefix",
        n_layers=2,
        d_model=32,
        n_heads=2,
        max_seq_len=72,
    ),
}
CLASSES = {
    "flat": BitTransformerLM,
    "hierarchical": HierarchicalBitLM,
    "byte": ByteTransformerLM,
    "shared-frames": HierarchicalBitLM,
}


def _inputs(config: ModelConfig) -> torch.Tensor:
    """Two windows of valid bit frames filling the context."""
    texts = [b"roundtr!" * config.max_bytes, b"Bits in!" * config.max_bytes]
    return torch.stack([bytes_to_bits(t[: config.max_bytes]) for t in texts])


@pytest.mark.parametrize("kind", CONFIGS)
def test_round_trip_gives_the_same_class_and_identical_logits(tmp_path, kind):
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind]).eval()
    hub.save_pretrained(model, tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "config.json",
        "model.safetensors",
        "README.md",
    }
    loaded = hub.load_model(tmp_path / "m")  # what every CLI uses
    assert type(loaded) is CLASSES[kind] and not loaded.training
    x = _inputs(model.config)
    assert torch.equal(model(x)[0], loaded(x)[0])
    # the folder reader builds the class its config names, too
    read = hub.read_folder(tmp_path / "m")
    assert type(read) is CLASSES[kind]
    assert torch.equal(model(x)[0], read.eval()(x)[0])


def test_export_records_metrics_in_config_and_model_card(tmp_path):
    model = build_model(CONFIGS["flat"])
    metrics = {"val/bpb": 2.34567, "val/K": torch.tensor(0.5), "step": 40, "val/S": float("nan")}
    hub.save_pretrained(model, tmp_path / "m", metrics=metrics)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format"] == hub.FORMAT
    assert config["metrics"] == {"val/bpb": 2.34567, "val/K": 0.5, "step": 40.0}  # NaN dropped
    card = huggingface_hub.ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.library_name == "bitlm"
    assert card.data.license == "agpl-3.0"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.tags == ["bit-level", "bitlm", "parity"]
    assert card.text.lstrip().startswith("# BitTransformerLM")
    assert "| `val/bpb` | 2.346 |" in card.text
    assert "| `val/S` |" not in card.text  # what config.json dropped, the card does not show
    assert "| parameters | 25,184 |" in card.text
    assert "2 layers × d_model 32" in card.text
    assert "| context | 72 bits (8 bytes) |" in card.text
    assert "from bitlm.io import load_model" in card.text
    assert 'load_model("hf://OWNER/NAME")' in card.text  # no repository yet


def test_a_model_card_without_metrics_says_so(tmp_path):
    hub.save_pretrained(build_model(CONFIGS["byte"]), tmp_path / "m")
    assert "metrics" not in json.loads((tmp_path / "m" / "config.json").read_text())
    card = (tmp_path / "m" / "README.md").read_text()
    assert "Nothing was measured for this export." in card
    assert "# ByteTransformerLM" in card


def test_the_folder_format_is_bitlm_v1(tmp_path):
    """What folders exported before now hold, so that they load unchanged: config.json is the
    sorted, 2-space-indented ``config_json`` and the weights carry the format tag."""
    model = build_model(CONFIGS["hierarchical"])
    hub.save_pretrained(model, tmp_path / "m", metrics={"val/bpb": 3.0})
    text = (tmp_path / "m" / "config.json").read_text()
    expected = hub.config_json(model, {"val/bpb": 3.0})
    assert text == json.dumps(expected, sort_keys=True, indent=2)
    assert expected["format"] == "bitlm/v1" == hub.FORMAT
    assert expected["model"] == CONFIGS["hierarchical"].to_dict()
    assert hub.read_config(tmp_path / "m") == expected
    with safe_open(tmp_path / "m" / "model.safetensors", "pt") as weights:
        assert weights.metadata() == {"format": "bitlm/v1"}
    assert hub.quantization_of(tmp_path / "m") is None


def test_training_export_card_reports_the_runs_bpb_and_telemetry(trained_run):
    run_dir, result = trained_run
    config = json.loads((run_dir / "model" / "config.json").read_text())
    metrics = config["metrics"]
    assert metrics["val/bpb"] == pytest.approx(result.json["val_bpb"], rel=1e-5)
    assert {"val/K", "val/C", "val/S", "step"} <= set(metrics)
    assert metrics["step"] == 40
    card = (run_dir / "model" / "README.md").read_text()
    assert "`val/bpb`" in card and "`val/S`" in card


def _tamper(folder: Path, add: str | None = None, drop: str | None = None) -> None:
    weights = load_file(folder / "model.safetensors")
    if add:
        weights[add] = torch.zeros(3)
    if drop:
        del weights[drop]
    save_file(weights, folder / "model.safetensors")


@pytest.mark.parametrize(
    ("add", "drop", "message"),
    [
        (None, "head.weight", "missing weights head.weight"),
        ("trunk.extra.weight", None, "unexpected weights trunk.extra.weight"),
        ("x.weight", "norm.weight", "missing weights norm.weight; unexpected weights x.weight"),
    ],
)
def test_loading_is_strict(tmp_path, add, drop, message):
    hub.save_pretrained(build_model(CONFIGS["flat"]), tmp_path / "m")
    _tamper(tmp_path / "m", add, drop)
    for load in (hub.load_model, hub.read_folder):
        with pytest.raises(BitLMError, match=message):
            load(tmp_path / "m")
    # the opt-out still works for someone who asks for it
    assert type(hub.read_folder(tmp_path / "m", strict=False)) is BitTransformerLM


def test_a_weight_of_the_wrong_shape_is_named(tmp_path):
    hub.save_pretrained(build_model(CONFIGS["flat"]), tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights["head.weight"] = torch.zeros(2, 16)
    save_file(weights, tmp_path / "m" / "model.safetensors")
    with pytest.raises(BitLMError, match=r"size mismatch for head\.weight"):
        hub.load_model(tmp_path / "m")


def test_a_folder_that_is_not_a_bitlm_export_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"hidden_size": 3}')
    for load in (hub.load_model, hub.read_folder):
        with pytest.raises(BitLMError, match="is not a bitlm config"):
            load(tmp_path / "m")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot be reached: check the network"),
    ],
)
def test_offline_pull_and_push_fail_with_one_clear_line(
    run_cli, tmp_path, trained_run, env, message, monkeypatch
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_cli("generate", "ckpt_path=hf://someone/model", "max_new_bytes=4", cwd=tmp_path)
    assert_user_error(result, "could not download someone/model", message)
    # the push side, in a fresh process so that the environment is read at import
    import subprocess
    import sys

    run_dir, _ = trained_run
    code = (
        "from bitlm import io as hub\n"
        f"hub.push_to_hub({str(run_dir / 'model')!r}, 'someone/model', token='hf_x')\n"
    )
    push = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert push.returncode != 0
    last = push.stderr.strip().splitlines()[-1]
    assert last.startswith("bitlm.core.errors.BitLMError: could not push")
    assert message in last


def test_a_malformed_repository_id_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(BitLMError, match="a repository id is owner/name"):
        hub.load_model("hf://a/b/c")


class LocalHub:
    """Stands in for the Hub's two upload calls: each upload copies the folder to
    ``root/<repo>/<n>`` after ``delay`` seconds and records the step training had reached."""

    def __init__(self, root: Path, delay: float) -> None:
        self.root, self.delay = root, delay
        self.uploads: list[dict] = []
        self.threads: set[str] = set()

    def install(self, monkeypatch) -> None:
        hub_self = self

        def create_repo(api, repo_id, private=None, exist_ok=False, **kw):
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, commit_message, **kw):
            hub_self.threads.add(threading.current_thread().name)
            time.sleep(hub_self.delay)
            target = hub_self.root / repo_id / str(len(hub_self.uploads))
            shutil.copytree(folder_path, target)
            hub_self.uploads.append({"message": commit_message, "folder": target})
            return f"https://huggingface.co/{repo_id}/commit/{len(hub_self.uploads)}"

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


def test_push_to_hub_uploads_the_folder_with_a_card_naming_the_repository(tmp_path, monkeypatch):
    local = LocalHub(tmp_path / "hub", delay=0)
    local.install(monkeypatch)
    folder = hub.save_pretrained(build_model(CONFIGS["flat"]), tmp_path / "m", metrics={"x": 2.5})
    url = hub.push_to_hub(folder, "me/model", token="hf_x", commit_message="first")
    assert url == "https://huggingface.co/me/model/commit/1"
    [upload] = local.uploads
    assert upload["message"] == "first"
    card = (upload["folder"] / "README.md").read_text()
    assert 'load_model("hf://me/model")' in card and "ckpt_path=hf://me/model" in card
    assert "| `x` | 2.5 |" in card
    assert "hf://OWNER/NAME" in (folder / "README.md").read_text()  # the local card is untouched
    for name in ("config.json", "model.safetensors"):
        assert (upload["folder"] / name).read_bytes() == (folder / name).read_bytes()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BitLMError, match="is not an exported bitlm model"):
        hub.push_to_hub(tmp_path / "empty", "me/model", token="hf_x")
    assert len(local.uploads) == 1


def _fit_with_upload(tmp_path, callback, steps: int):
    from bitlm.training.datamodule import BitDataModule
    from bitlm.training.module import BitLMModule

    module = BitLMModule(
        CONFIGS["flat"].to_dict(), optimizer={"lr": 0.001}, scheduler={"warmup_steps": 1}
    )
    datamodule = BitDataModule(seq_len=72, batch_size=4, cache_dir=str(tmp_path))
    trainer = quiet_trainer(max_steps=steps, callbacks=[callback], limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    return module


def test_hub_upload_callback_uploads_from_a_background_thread_without_blocking(
    tmp_path, monkeypatch
):
    from bitlm.training.callbacks.hub_upload import HubUpload

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    local = LocalHub(tmp_path / "hub", delay=1.0)
    local.install(monkeypatch)
    steps_seen = []

    callback = HubUpload("me/model", tmp_path / "export", every_n_steps=2, final_timeout_s=60)
    original_upload = callback._upload

    def recording(trainer, pl_module):
        steps_seen.append((trainer.global_step, callback.uploads.busy))
        original_upload(trainer, pl_module)

    callback._upload = recording
    started = time.monotonic()
    module = _fit_with_upload(tmp_path, callback, steps=12)
    assert time.monotonic() - started < 60
    # uploads ran on the callback's thread, never the training thread
    assert local.threads and all(name.startswith("hub-upload") for name in local.threads)
    # training reached later upload points while the first was still in flight: not blocked
    assert any(busy for _, busy in steps_seen)
    assert callback.skipped >= 1
    # the last upload is the final model, with its card naming the repository
    final = local.uploads[-1]
    assert final["message"] == "bitlm-train: step 12"
    assert "hf://me/model" in (final["folder"] / "README.md").read_text()
    loaded = hub.load_model(final["folder"])
    x = _inputs(CONFIGS["flat"])
    assert torch.equal(loaded(x)[0], module.model.eval()(x)[0])
    assert callback.uploads.completed == len(local.uploads)


def test_hub_upload_needs_a_token(tmp_path, monkeypatch):
    from bitlm.training.callbacks.hub_upload import HubUpload

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(BitLMError, match="set the HF_TOKEN environment variable"):
        _fit_with_upload(tmp_path, HubUpload("me/model", tmp_path / "e", every_n_steps=2), 2)


def test_a_failed_upload_is_a_warning_and_training_finishes(tmp_path, monkeypatch):
    from bitlm.training.callbacks.hub_upload import HubUpload

    monkeypatch.setenv("HF_TOKEN", "hf_test")

    def refuse(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    callback = HubUpload("me/model", tmp_path / "e", every_n_steps=3)
    with pytest.warns(UserWarning, match="hub upload to me/model failed: could not push"):
        _fit_with_upload(tmp_path, callback, steps=6)
    assert callback.uploads.completed == 0
    assert hub.load_model(tmp_path / "e")  # the export itself is on disk


@pytest.mark.parametrize(
    ("options", "message"),
    [({"repo_id": "no-owner"}, "owner/name"), ({"every_n_steps": 0}, "every_n_steps")],
)
def test_hub_upload_refuses_bad_options(tmp_path, options, message):
    from bitlm.training.callbacks.hub_upload import HubUpload

    arguments = {"repo_id": "me/model", "dirpath": tmp_path} | options
    with pytest.raises(BitLMError, match=message):
        HubUpload(**arguments)


def test_hub_upload_config_composes_with_the_defaults():
    from .test_configs import _compose

    cfg = _compose(
        "train", "callbacks=[default,hub_upload]", "callbacks.hub_upload.repo_id=me/m", *TINY_TRAIN
    )
    assert {"model_export", "hub_upload", "telemetry"} <= set(cfg.callbacks)
