"""Train a bit-native language model: `python train.py [overrides]` = `bitlm-train [overrides]`."""

from bitlm.cli.train import main

if __name__ == "__main__":
    main()
