"""Command-line entry points: bitlm-train, bitlm-eval, bitlm-generate (Hydra apps)."""
