"""Publish the model to the Hugging Face Hub while it trains."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from bitlm.core.background import BackgroundTask
from bitlm.core.errors import BitLMError
from bitlm.io import push_to_hub, save_pretrained
from bitlm.training.callbacks.model_export import export_metrics, full_state


class HubUpload(L.Callback):
    """Every ``every_n_steps`` steps and at the end of training, export the model (as
    ``ModelExport`` does, with its metrics) to ``dirpath`` and upload that folder to the Hub
    repository ``repo_id`` (``bitlm.io.push_to_hub``, token from ``HF_TOKEN``).

    Rank 0 uploads on a background thread (``bitlm.core.background.BackgroundTask``): training
    never waits for the network. While an upload is still running, the next periodic export
    is skipped (the folder being uploaded is not touched; the one after carries newer weights).
    A failed upload is a warning, not the end of the run: the exported folder is still on disk.
    The last upload is waited for (up to ``final_timeout_s``) when training ends. Logs
    ``hub/uploads`` (completed uploads) to every logger.
    """

    def __init__(
        self,
        repo_id: str,
        dirpath: str | Path,
        every_n_steps: int = 1000,
        private: bool = True,
        final_timeout_s: float = 600.0,
    ) -> None:
        if not isinstance(repo_id, str) or repo_id.count("/") != 1:
            raise BitLMError(f"callbacks.hub_upload.repo_id must be owner/name, got {repo_id!r}")
        if every_n_steps < 1:
            raise BitLMError(f"hub_upload every_n_steps must be >= 1, got {every_n_steps}")
        self.repo_id = repo_id
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.private = private
        self.final_timeout_s = final_timeout_s
        self.uploads = BackgroundTask("hub-upload")
        self.skipped = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and not (
            os.environ.get("HF_TOKEN") or huggingface_hub.get_token()
        ):
            raise BitLMError(
                "callbacks.hub_upload needs a Hugging Face token with write access: set the "
                "HF_TOKEN environment variable (or run `hf auth login`)"
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._upload(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not self.uploads.wait(self.final_timeout_s):
            rank_zero_warn("the previous hub upload is still running; the final one is skipped")
        self._upload(trainer, pl_module)
        if trainer.is_global_zero:
            self.uploads.wait(self.final_timeout_s)
            self._report(trainer)
            self.uploads.close()

    def _upload(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = full_state(pl_module)  # a collective: every rank takes part
        if not trainer.is_global_zero:
            return
        self._report(trainer)
        if self.uploads.busy:
            self.skipped += 1
            return
        step = trainer.global_step
        save_pretrained(pl_module.model, self.dirpath, state, metrics=export_metrics(trainer))
        self.uploads.submit(
            push_to_hub,
            self.dirpath,
            self.repo_id,
            private=self.private,
            commit_message=f"bitlm-train: step {step}",
        )

    def _report(self, trainer: L.Trainer) -> None:
        for error in self.uploads.take_failures():
            rank_zero_warn(f"hub upload to {self.repo_id} failed: {error}")
        completed = self.uploads.completed
        for logger in trainer.loggers:
            logger.log_metrics({"hub/uploads": completed}, trainer.global_step)
        if completed:
            rank_zero_info(f"hub: {completed} upload(s) to {self.repo_id} done")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state["skipped"]
