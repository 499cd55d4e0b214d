"""Serving throughput and latency of bitlm-serve at 8 concurrent clients on loopback.

Starts ``bitlm-serve`` (a subprocess, as deployed) on an exported ``model=small`` network, sends
REQUESTS /generate requests from CLIENTS threads (each waits for its answer before sending the
next), and reports requests/s and p50/p99 latency. Reference measured in the same run: the same
generations called in-process one after another (``bitlm.generation.generate_text``, no HTTP), so
``speedup_vs_sequential`` = server requests/s ÷ in-process generations/s and the HTTP and
queueing overhead show up as ``p50_ratio`` (server p50 ÷ in-process p50).

    python experiments/serving/bench.py [--requests 64] [--clients 8] [--bytes 32]

Prints one JSON object (also written to experiments/serving/out/serving.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from hydra import compose, initialize_config_dir

from bitlm.core.runtime import config_dir
from bitlm.generation import GenerationOptions, generate_text
from bitlm.io import save_pretrained
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

OUT = Path(__file__).parent / "out"


def small_model():
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["model=small"])
    torch.manual_seed(0)
    return build_model(ModelConfig.from_dict(dict(cfg.module.model))).eval()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def serve(model_dir: Path, port: int, max_concurrent: int) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "bitlm.cli.serve",
        f"ckpt_path={model_dir}",
        f"port={port}",
        "safety.enabled=false",
        f"limits.max_concurrent={max_concurrent}",
        "log_level=warning",
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/status", timeout=2)
            return process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(process.stderr.read()) from None
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--bytes", type=int, default=32)
    parser.add_argument("--max-concurrent", type=int, default=2)
    args = parser.parse_args()
    model = small_model()
    body = {"prompt": "The quick brown fox ", "max_new_bytes": args.bytes}

    reference = []
    for seed in range(min(args.requests, 16)):
        started = time.perf_counter()
        options = GenerationOptions(seed=seed, temperature=0.8)  # the server's default
        generate_text(model, body["prompt"].encode(), args.bytes, options)
        reference.append(time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        save_pretrained(model, Path(tmp) / "model")
        process = serve(Path(tmp) / "model", port, args.max_concurrent)
        try:
            url = f"http://127.0.0.1:{port}/generate"

            def one(seed: int) -> tuple[float, int]:
                started = time.perf_counter()
                response = httpx.post(url, json=body | {"seed": seed}, timeout=300)
                return time.perf_counter() - started, response.status_code

            one(0)  # warm-up
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - started
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    latencies = [t for t, _ in results]
    report = {
        "benchmark": "serving",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": f"model=small ({sum(p.numel() for p in model.parameters()):,} parameters)",
        "requests": args.requests,
        "clients": args.clients,
        "max_new_bytes": args.bytes,
        "server_max_concurrent": args.max_concurrent,
        "errors": sum(status != 200 for _, status in results),
        "requests_per_s": args.requests / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 99),
        "in_process_p50_s": statistics.median(reference),
        "in_process_per_s": 1 / statistics.mean(reference),
    }
    report["speedup_vs_sequential"] = report["requests_per_s"] / report["in_process_per_s"]
    report["p50_ratio"] = report["p50_s"] / report["in_process_p50_s"]
    OUT.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    (OUT / f"serving_c{args.max_concurrent}.json").write_text(text + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
