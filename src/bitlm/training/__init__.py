"""Lightning wrappers around the plain modules: LightningModule, DataModule, callbacks."""
