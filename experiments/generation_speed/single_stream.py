"""Single-stream sampling speed of the default model (``model=small``, untrained: speed does not
depend on the weights): ``--bytes`` new bytes after 1k and 4k bits of context, for both trunks.

It calls only ``bitlm.generation.generate_bits`` and the config, which every release has, so the
same script times the release before batched decoding and this one (``run.sh`` runs it with
each on ``PYTHONPATH``). ``--profile`` also writes the cProfile of one 1k-bit call per trunk,
sorted by own time: where the time goes.

    python experiments/generation_speed/single_stream.py OUT.json [--bytes 200] [--profile P]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import pstats
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from bitlm.bench.measure import corpus_bytes
from bitlm.core.bits import FRAME_BITS
from bitlm.core.runtime import config_dir
from bitlm.generation import GenerationOptions, generate_bits
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

CONTEXTS = (1024, 4096)


def small_model(trunk: str, window: int):
    """``model=small`` with ``trunk``, its window widened to ``window`` bits (no context cut)."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["model=small", f"model.trunk={trunk}"])
    config = ModelConfig.from_dict(dict(cfg.module.model))
    config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, window))
    torch.manual_seed(0)
    return build_model(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--bytes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", help="write the profiles to this text file")
    args = parser.parse_args()
    window = (max(CONTEXTS) // FRAME_BITS + args.bytes + 2) * FRAME_BITS
    options = GenerationOptions(seed=0, temperature=1.0)
    results, profiles = {}, []
    for trunk in ("hierarchical", "flat"):
        model = small_model(trunk, window)
        for context in CONTEXTS:
            prompt = corpus_bytes(context // FRAME_BITS)
            generate_bits(model, prompt, args.bytes, options)  # warm-up
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                generate_bits(model, prompt, args.bytes, options)
                seconds.append(time.perf_counter() - started)
            median = statistics.median(seconds)
            results[f"{trunk}/{context}"] = {"bytes_per_s": args.bytes / median, "seconds": median}
            print(trunk, context, f"{args.bytes / median:.1f} bytes/s", flush=True)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(generate_bits, model, corpus_bytes(113), args.bytes, options)
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
            profiles.append(f"## {trunk}, {args.bytes} bytes after 1017 bits\n{text.getvalue()}")
    report = {
        "new_bytes": args.bytes,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": results,
    }
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    if args.profile:
        with open(args.profile, "w") as f:
            f.write("\n".join(profiles))


if __name__ == "__main__":
    main()
