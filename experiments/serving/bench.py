"""Serving throughput and latency of bitlm-serve at 1, 8 and 32 concurrent clients on loopback.

Starts ``bitlm-serve`` (a subprocess, as deployed; ``--src`` puts another checkout's ``src`` on
its PYTHONPATH, which is how the release before continuous batching is measured in the same
run) on an exported ``model=small`` network, and for each client count sends ``8 × clients``
(at least 32) /generate requests from that many threads (each waits for its answer before
sending the next): requests/s and p50/p99 latency. Reference measured in the same run: the same
generations called in-process one after another (``bitlm.generation.generate_text``, no HTTP).

    python experiments/serving/bench.py --label after [--clients 1,8,32] [--bytes 64] [--src DIR]
    python experiments/serving/bench.py --plot        (out/serving_before.json, _after.json)

Writes experiments/serving/out/serving_<label>.json and prints it.
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


def serve(model_dir: Path, port: int, max_concurrent: int | None, src: str | None):
    """``bitlm-serve`` on ``port``, ungated, from ``src`` (None: this checkout)."""
    argv = [
        sys.executable,
        "-m",
        "bitlm.cli.serve",
        f"ckpt_path={model_dir}",
        f"port={port}",
        "safety.enabled=false",
        "limits.max_queued=256",
        "log_level=warning",
    ]
    if max_concurrent is not None:
        argv.append(f"limits.max_concurrent={max_concurrent}")
    env = dict(os.environ, PYTHONPATH=src) if src else None
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/status", timeout=2)
            return process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(process.stderr.read()) from None
            time.sleep(0.3)


def load(url: str, body: dict, clients: int) -> dict:
    """``8 × clients`` (≥ 32) requests from ``clients`` threads: requests/s, p50, p99."""
    requests = max(32, 8 * clients)

    def one(seed: int) -> tuple[float, int]:
        started = time.perf_counter()
        response = httpx.post(url, json=body | {"seed": seed}, timeout=600)
        return time.perf_counter() - started, response.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    latencies = [t for t, _ in results]
    return {
        "requests": requests,
        "errors": sum(status != 200 for _, status in results),
        "requests_per_s": requests / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 99),
    }


def plot() -> None:
    """out/serving.png: requests/s and p99 against clients, before and after."""
    from bitlm.bench.plots import save, subplots

    fig, axes = subplots(2, width=4.5)
    for label in ("before", "after"):
        report = json.loads((OUT / f"serving_{label}.json").read_text())
        clients = [int(c) for c in report["results"]]
        rows = list(report["results"].values())
        axes[0][0].plot(clients, [r["requests_per_s"] for r in rows], marker="o", label=label)
        axes[0][1].plot(clients, [r["p99_s"] for r in rows], marker="o", label=label)
    for ax, ylabel in zip(axes[0], ("requests / s", "p99 latency (s)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set(xlabel="concurrent clients", ylabel=ylabel)
        ax.legend()
    fig.suptitle(f"bitlm-serve, {report['max_new_bytes']}-byte completions, model=small")
    save(fig, OUT / "serving.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--bytes", type=int, default=64)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--src", default=None, help="run the server from this src folder")
    parser.add_argument("--plot", action="store_true", help="draw out/serving.png and exit")
    args = parser.parse_args()
    if args.plot:
        return plot()
    model = small_model()
    body = {"prompt": "The quick brown fox ", "max_new_bytes": args.bytes}
    reference = []
    for seed in range(16):
        started = time.perf_counter()
        options = GenerationOptions(seed=seed, temperature=0.8)  # the server's default
        generate_text(model, body["prompt"].encode(), args.bytes, options)
        reference.append(time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        save_pretrained(model, Path(tmp) / "model")
        process = serve(Path(tmp) / "model", port, args.max_concurrent, args.src)
        try:
            url = f"http://127.0.0.1:{port}/generate"
            httpx.post(url, json=body, timeout=600)  # warm-up
            results = {c: load(url, body, c) for c in map(int, args.clients.split(","))}
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    report = {
        "benchmark": "serving",
        "label": args.label,
        "server_src": args.src or "this checkout",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": f"model=small ({sum(p.numel() for p in model.parameters()):,} parameters)",
        "max_new_bytes": args.bytes,
        "server_max_concurrent": args.max_concurrent or "the server's default",
        "in_process_p50_s": statistics.median(reference),
        "in_process_per_s": 1 / statistics.mean(reference),
        "results": results,
    }
    OUT.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    (OUT / f"serving_{args.label}.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
