"""K/C/S telemetry: metrics, losses and the telemetry synthesizer (plain torch, no Lightning)."""
