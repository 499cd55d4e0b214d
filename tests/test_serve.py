"""bitlm-serve: every route with good and bad input, auth, limits, concurrency, live telemetry
from a training run, the command line, and the dashboard in headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from omegaconf import OmegaConf

from bitlm import io as hub
from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, generate
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.serve.app import create_app
from bitlm.serve.settings import LOOPBACK_HOSTS, Limits, Settings, allowed_hosts

from .conftest import assert_user_error, quiet_trainer

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAUSAL = ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=144)
DIFFUSION = ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=144, mode="diffusion")
TEST_HOSTS = (*LOOPBACK_HOSTS, "testserver")  # what TestClient sends as Host


def _app(tmp_path, config=CAUSAL, source="tiny", **settings):
    torch.manual_seed(0)
    model = build_model(config).eval()
    options = {
        "token": TOKEN,
        "safety": None,
        "save_dir": tmp_path / "saved",
        "allowed_hosts": TEST_HOSTS,
    }
    return create_app(model, Settings(**(options | settings)), source, {"val/bpb": 3.5})


@pytest.fixture
def client(tmp_path):
    return TestClient(_app(tmp_path))


def assert_error(response, status: int, fragment: str) -> dict:
    """A JSON error with this status, naming ``fragment``, and no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert fragment in str(body["error"]) + str(body.get("details", ""))
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


def test_status_and_model_config(client):
    status = client.get("/status").json()
    assert status["status"] == "ok" and status["model"] == "BitTransformerLM"
    assert status["mutating_routes_enabled"] is True
    info = client.get("/model_config").json()
    assert info["config"]["d_model"] == 32 and info["config"]["max_seq_len"] == 144
    assert info["parameters"] == 25184
    assert info["metrics"] == {"val/bpb": 3.5}
    assert info["limits"]["max_new_bytes"] == 1024


def test_the_model_path_is_shown_only_with_the_token(tmp_path):
    client = TestClient(_app(tmp_path, source="/srv/models/private-run"))
    for route in ("/status", "/model_config"):
        assert client.get(route).json()["source"] is None
        wrong = {"Authorization": "Bearer wrong"}
        assert client.get(route, headers=wrong).json()["source"] is None
        assert client.get(route, headers=AUTH).json()["source"] == "/srv/models/private-run"
    hub_id = TestClient(_app(tmp_path, source="hf://owner/name", token=None))
    assert hub_id.get("/status").json()["source"] == "hf://owner/name"  # not a local path


def test_generate_returns_decodable_text(client):
    body = client.post("/generate", json={"prompt": "Once", "max_new_bytes": 12, "seed": 3}).json()
    assert body["bytes"] == 12 and body["parity_errors"] == 0 and body["mode"] == "causal"
    again = client.post("/generate", json={"prompt": "Once", "max_new_bytes": 12, "seed": 3})
    assert again.json()["text"] == body["text"]  # seeded: reproducible
    stopped = client.post("/generate", json={"max_new_bytes": 0}).json()
    assert stopped["bytes"] == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "x", "max_new_bytes": -1}, "body.max_new_bytes"),
        ({"prompt": "x", "temperature": "hot"}, "body.temperature"),
        ({"prompt": "x", "top_p": 0}, "body.top_p"),
        ({"prompt": "x", "mode": "sideways"}, "body.mode"),
        ({"prompt": "x", "exec": "import os"}, "Extra inputs are not permitted"),
        ({"prompt": 3}, "body.prompt"),
        ([1, 2], "body"),
    ],
)
def test_generate_refuses_invalid_bodies(client, body, fragment):
    assert_error(client.post("/generate", json=body), 422, fragment)


@pytest.mark.parametrize("field", ["prompt", "suffix", "stop"])
def test_text_that_is_not_valid_unicode_is_refused(client, field):
    body = f'{{"{field}": "ok \\ud800", "max_new_bytes": 1}}'.encode()  # a lone surrogate
    response = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "cannot be encoded as UTF-8")
    assert error["details"][0]["field"] == f"body.{field}"


def test_generate_refuses_malformed_json(client):
    response = client.post(
        "/generate", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "JSON")


def test_generate_limits(tmp_path):
    limits = Limits(max_prompt_bytes=10, max_new_bytes=5, max_body_bytes=200)
    client = TestClient(_app(tmp_path, limits=limits))
    assert_error(client.post("/generate", json={"prompt": "x" * 11}), 413, "at most 10")
    assert_error(client.post("/generate", json={"prompt": "é" * 6}), 413, "12 bytes")  # UTF-8
    assert_error(client.post("/generate", json={"max_new_bytes": 6}), 422, "at most 5")
    big = {"prompt": "x" * 300}
    assert_error(client.post("/generate", json=big), 413, "over 200 bytes")
    assert (
        client.post("/generate", json={"prompt": "x" * 10, "max_new_bytes": 5}).status_code == 200
    )


def test_a_chunked_body_over_the_limit_is_refused(tmp_path):
    client = TestClient(_app(tmp_path, limits=Limits(max_body_bytes=100)))

    def chunks():
        yield b'{"prompt": "'
        yield b"x" * 200
        yield b'"}'

    response = client.post(
        "/generate", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "over 100 bytes")


def test_generation_past_its_time_limit_stops_with_504(tmp_path):
    client = TestClient(_app(tmp_path, limits=Limits(timeout_s=0.05)))
    started = time.monotonic()
    response = client.post("/generate", json={"max_new_bytes": 1000, "temperature": 1.0})
    assert_error(response, 504, "time limit")
    assert time.monotonic() - started < 5  # it stopped itself, long before 1000 bytes


def test_diffusion_generation_and_a_mode_the_model_cannot_sample(tmp_path):
    client = TestClient(_app(tmp_path, config=DIFFUSION))
    body = client.post(
        "/generate",
        json={"prompt": "ab", "max_new_bytes": 6, "mode": "diffusion", "diffusion_steps": 4},
    ).json()
    assert body["mode"] == "diffusion" and body["bytes"] == 6 and body["parity_errors"] == 0
    assert_error(client.post("/generate", json={"mode": "causal"}), 400, "model.mode=diffusion")


def test_safety_gate_passes_or_refuses_with_the_telemetry(tmp_path):
    lenient = {"c_floor": 0.0, "s_floor": -1.0, "max_retries": 0}
    ok = TestClient(_app(tmp_path, safety=lenient)).post("/generate", json={"max_new_bytes": 16})
    body = ok.json()
    assert body["attempts"] == 1 and {"K", "C", "S", "C_lz76"} <= set(body["telemetry"])
    strict = {"c_floor": 2.0, "max_retries": 1, "backoff_s": 0.0}  # LZ76 ≤ 2: always unsafe
    refused = TestClient(_app(tmp_path, safety=strict)).post(
        "/generate", json={"max_new_bytes": 16}
    )
    error = assert_error(refused, 422, "no sample passed the safety gate in 2 attempts")
    assert error["telemetry"]["c_low"] is True


@pytest.mark.parametrize("route", ["/save_checkpoint", "/telemetry"])
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": TOKEN}, 401),
    ],
)
def test_mutating_routes_need_the_bearer_token(client, route, headers, status):
    body = {"name": "m"} if route == "/save_checkpoint" else {"step": 1, "metrics": {}}
    response = client.post(route, json=body, headers=headers)
    assert_error(response, status, "bearer token")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_without_a_server_token_mutating_routes_are_disabled(tmp_path):
    client = TestClient(_app(tmp_path, token=None))
    response = client.post("/save_checkpoint", json={"name": "m"}, headers=AUTH)
    assert_error(response, 403, "BITLM_TOKEN")
    assert not (tmp_path / "saved").exists()


def test_save_checkpoint_exports_a_loadable_model_and_never_overwrites_silently(client, tmp_path):
    response = client.post("/save_checkpoint", json={"name": "snap-1"}, headers=AUTH)
    assert response.status_code == 200, response.text
    saved = tmp_path / "saved" / "snap-1"
    assert response.json() == {
        "saved": "snap-1",
        "path": str(saved),
        "bytes": hub.stored_size(saved),
    }
    model = hub.load_model(saved)
    x = torch.zeros(1, 144, dtype=torch.long)
    assert torch.equal(model(x)[0], client.app.state.server.model(x)[0])
    assert hub.read_config(saved)["metrics"] == {"val/bpb": 3.5}
    before = (saved / "model.safetensors").stat().st_mtime_ns
    assert_error(
        client.post("/save_checkpoint", json={"name": "snap-1"}, headers=AUTH), 409, "exists"
    )
    assert (saved / "model.safetensors").stat().st_mtime_ns == before
    again = client.post(
        "/save_checkpoint", json={"name": "snap-1", "overwrite": True}, headers=AUTH
    )
    assert again.status_code == 200


def _user_folder(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")


def _foreign_config(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "config.json").write_text('{"format": "someone-else", "model": {}}')


def _plain_file(target: Path) -> None:
    target.parent.mkdir(parents=True)
    target.write_text("mine")


def _link_to_an_export(target: Path) -> None:
    export = target.parent.parent / "elsewhere"
    hub.save_pretrained(build_model(CAUSAL), export)
    target.parent.mkdir(parents=True)
    target.symlink_to(export)


@pytest.mark.parametrize("make", [_user_folder, _foreign_config, _plain_file, _link_to_an_export])
def test_save_checkpoint_overwrites_only_an_earlier_export(client, tmp_path, make):
    target = tmp_path / "saved" / "userstuff"
    make(target)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    body = {"name": "userstuff", "overwrite": True}
    response = client.post("/save_checkpoint", json=body, headers=AUTH)
    assert_error(
        response, 409, "userstuff exists and is not a bitlm export: it will not be replaced"
    )
    after = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert after == before  # nothing deleted, moved or written


@pytest.mark.parametrize("name", ["../escape", "/etc/x", ".hidden", "a/b", "", "x" * 65, "a b"])
def test_save_checkpoint_names_cannot_leave_the_save_folder(client, tmp_path, name):
    response = client.post("/save_checkpoint", json={"name": name}, headers=AUTH)
    assert_error(response, 422, "body.name")
    assert not any(tmp_path.parent.glob("escape")) and not (tmp_path / "saved").exists()


def test_telemetry_is_stored_charted_and_exported_to_prometheus(client):
    for step in range(12):
        k = 0.2 if step < 11 else 0.9  # a jump of 0.7 over the 10-report window: drift
        report = {"step": step * 10, "metrics": {"telemetry/K": k, "train/loss": 0.5 - step / 100}}
        assert client.post("/telemetry", json=report, headers=AUTH).json()["accepted"] == 2
    metrics = client.get("/metrics?history=5").json()
    assert metrics["step"] == 110 and metrics["latest"]["telemetry/K"] == 0.9
    assert [p["step"] for p in metrics["history"]] == [70, 80, 90, 100, 110]
    [warning] = metrics["warnings"]
    assert warning["metric"] == "telemetry/K" and warning["change"] == pytest.approx(0.7)
    assert client.get("/status").json()["training_step"] == 110
    text = client.get("/metrics", headers={"Accept": "text/plain"}).text
    assert 'bitlm_telemetry{metric="telemetry/K"} 0.9' in text
    assert "bitlm_training_step 110.0" in text and "bitlm_drift_warnings 1.0" in text
    assert "bitlm_requests_total" in text


@pytest.mark.parametrize(
    ("report", "fragment"),
    [
        ({"step": -1, "metrics": {}}, "body.step"),
        ({"step": 1, "metrics": {"a b": 1.0}}, "metric names"),
        ({"step": 1, "metrics": {"x": "NaN"}}, "not a finite number"),
        ({"step": 1, "metrics": {f"m{i}": 1.0 for i in range(300)}}, "body.metrics"),
        ({"step": 1}, "body.metrics"),
    ],
)
def test_telemetry_refuses_invalid_reports(client, report, fragment):
    assert_error(client.post("/telemetry", json=report, headers=AUTH), 422, fragment)


def test_metrics_refuses_bad_parameters(client):
    assert_error(client.get("/metrics?history=-1"), 400, "history")
    assert_error(client.get("/metrics?format=xml"), 400, "format")
    assert_error(client.get("/metrics?history=lots"), 422, "query.history")


def test_unknown_routes_methods_and_files_are_json_errors(client):
    assert_error(client.get("/exec"), 404, "Not Found")
    assert_error(client.post("/exec", json={"cmd": "ls"}), 404, "Not Found")
    assert_error(client.get("/generate"), 405, "Method Not Allowed")
    assert_error(client.get("/static/..%2Fapp.py"), 404, "")
    assert_error(client.get("/static/dashboard.html.bak"), 404, "no such file")


def test_an_unexpected_error_is_a_500_without_the_traceback(tmp_path, monkeypatch, caplog):
    import bitlm.serve.app as app_module

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app_module, "generate_text", broken)
    client = TestClient(_app(tmp_path), raise_server_exceptions=False)
    response = client.post("/generate", json={"max_new_bytes": 1})
    body = assert_error(response, 500, "internal server error")
    assert "secret" not in response.text
    assert "secret internal detail" in caplog.text  # the log has it
    assert body == {"error": "internal server error (details are in the server log)"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert 'bitlm_requests_total{route="/generate",status="500"} 1.0' in _prometheus(client)


def _prometheus(client: TestClient) -> str:
    return client.get("/metrics?format=prometheus").text


def test_every_answer_is_counted_and_carries_the_security_headers(tmp_path):
    client = TestClient(_app(tmp_path, limits=Limits(max_body_bytes=10)))
    answers = {
        "/generate 413": client.post("/generate", json={"prompt": "x" * 20}),
        "/nowhere 404": client.get("/nowhere"),
        "host 400": client.get("/status", headers={"Host": "evil.example"}),
        "/status 200": client.get("/status"),
    }
    for answer, response in answers.items():
        assert response.headers["Content-Security-Policy"].startswith("default-src"), answer
        assert response.headers["Referrer-Policy"] == "no-referrer", answer
    text = _prometheus(client)
    assert 'bitlm_requests_total{route="unmatched",status="413"} 1.0' in text
    assert 'bitlm_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'bitlm_requests_total{route="unmatched",status="400"} 1.0' in text
    assert 'bitlm_requests_total{route="/status",status="200"} 1.0' in text


def test_without_a_model_the_server_still_takes_telemetry(tmp_path):
    client = TestClient(create_app(None, Settings(token=TOKEN, allowed_hosts=TEST_HOSTS)))
    assert client.get("/status").json()["model"] is None
    assert_error(client.post("/generate", json={}), 503, "no model is loaded")
    assert_error(client.get("/model_config"), 503, "no model is loaded")
    report = {"step": 1, "metrics": {"val/bpb": 2.0}}
    assert client.post("/telemetry", json=report, headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("allowed", "host", "status"),
    [
        (LOOPBACK_HOSTS, "evil.example", 400),
        (LOOPBACK_HOSTS, "127.0.0.1.evil.example:8000", 400),
        (LOOPBACK_HOSTS, "127.0.0.1:8000", 200),
        (LOOPBACK_HOSTS, "localhost", 200),
        (LOOPBACK_HOSTS, "[::1]:8000", 200),
        (("*.example.com",), "api.example.com", 200),
        (("*",), "evil.example", 200),
    ],
)
def test_only_allowed_host_headers_are_answered(tmp_path, allowed, host, status):
    client = TestClient(_app(tmp_path, allowed_hosts=allowed))
    response = client.get("/status", headers={"Host": host})
    if status == 400:  # DNS rebinding: another site's name pointed at this machine
        assert_error(response, 400, f"does not answer to the host {host!r}")
    else:
        assert response.status_code == 200, response.text


def test_responses_carry_security_headers(client):
    headers = client.get("/").headers
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


@contextlib.contextmanager
def live_server(app):
    """``app`` under a real uvicorn on a free loopback port, in a thread; yields its URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _raw_request(url: str, data: bytes, timeout: float) -> bytes:
    """Send ``data`` on a fresh connection to ``url``, then stall; what the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(data)
        answer = b""
        while b"}" not in answer:  # the JSON error's end
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_body_that_stalls_is_answered_408(tmp_path):
    app = _app(tmp_path, limits=Limits(body_timeout_s=0.5))
    with live_server(app) as url:
        headers = (
            b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        )
        started = time.monotonic()
        answer = _raw_request(url, headers + b'Content-Length: 100\r\n\r\n{"prompt": ', 5)
        chunked = _raw_request(url, headers + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}", 5)
        assert time.monotonic() - started < 3
        for response in (answer, chunked):
            assert response.startswith(b"HTTP/1.1 408"), response
            assert b'"error":"the request body did not arrive within 0.5 s"' in response
            assert b"nosniff" in response
        assert httpx.get(f"{url}/status").status_code == 200  # and the server goes on


def test_concurrent_generate_requests_all_complete(tmp_path):
    n = 12
    app = _app(tmp_path, limits=Limits(max_concurrent=3, max_queued=n))
    with live_server(app) as url:

        def one(seed: int) -> httpx.Response:
            body = {"prompt": "Hi", "max_new_bytes": 6, "seed": seed}
            return httpx.post(f"{url}/generate", json=body, timeout=120)

        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(one, range(n)))
        assert [r.status_code for r in responses] == [200] * n
        assert all(r.json()["bytes"] == 6 and r.json()["parity_errors"] == 0 for r in responses)
        # the same seed alone gives the same text: concurrency does not mix requests
        alone = one(5).json()["text"]
        assert responses[5].json()["text"] == alone
        assert httpx.get(f"{url}/status").json()["generating"] == 0


def test_requests_beyond_the_queue_are_told_to_retry(tmp_path):
    app = _app(tmp_path, limits=Limits(max_concurrent=1, max_queued=0))
    with live_server(app) as url:
        body = {"max_new_bytes": 300}
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(lambda _: httpx.post(f"{url}/generate", json=body, timeout=120), range(4))
            )
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200 and 503 in statuses
        assert all("busy" in r.json()["error"] for r in responses if r.status_code == 503)


def test_a_training_run_publishes_live_telemetry(tmp_path, monkeypatch):
    from bitlm.training.callbacks.telemetry_publisher import TelemetryPublisher
    from bitlm.training.datamodule import BitDataModule
    from bitlm.training.module import BitLMModule

    monkeypatch.setenv("BITLM_TOKEN", TOKEN)
    app = create_app(None, Settings(token=TOKEN))
    with live_server(app) as url:
        publisher = TelemetryPublisher(url, every_n_steps=2)
        module = BitLMModule(
            CAUSAL.to_dict(), optimizer={"lr": 0.001}, scheduler={"warmup_steps": 1}
        )
        datamodule = BitDataModule(seq_len=144, batch_size=4, cache_dir=str(tmp_path))
        trainer = quiet_trainer(max_steps=8, callbacks=[publisher], val_check_interval=4)
        trainer.fit(module, datamodule=datamodule)
        metrics = httpx.get(f"{url}/metrics?history=100").json()
    assert publisher.failures == 0
    assert metrics["step"] == 8
    assert {"train/loss", "telemetry/K", "telemetry/C", "telemetry/S", "val/bpb"} <= set(
        metrics["latest"]
    )
    assert len(metrics["history"]) >= 4
    assert metrics["latest"]["train/loss"] == pytest.approx(
        float(trainer.callback_metrics["train/loss"])
    )


def test_publishing_with_a_wrong_token_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    from bitlm.training.callbacks.telemetry_publisher import TelemetryPublisher
    from bitlm.training.datamodule import BitDataModule
    from bitlm.training.module import BitLMModule

    monkeypatch.setenv("BITLM_TOKEN", "not-the-token")
    with live_server(create_app(None, Settings(token=TOKEN))) as url:
        publisher = TelemetryPublisher(url, every_n_steps=1)
        module = BitLMModule(
            CAUSAL.to_dict(), optimizer={"lr": 0.001}, scheduler={"warmup_steps": 1}
        )
        datamodule = BitDataModule(seq_len=144, batch_size=4, cache_dir=str(tmp_path))
        trainer = quiet_trainer(max_steps=6, callbacks=[publisher], limit_val_batches=0)
        with pytest.warns(UserWarning, match="HTTP 401") as warned:
            trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 6 and publisher.failures >= 1
    assert sum("could not publish" in str(w.message) for w in warned) == 1


def wait_for_status(url: str, process: subprocess.Popen, timeout: float = 120) -> dict:
    """``GET url/status`` once the server ``process`` answers; fails if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(f"{url}/status", timeout=2).json()
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bitlm_serve_command_serves_and_shuts_down_cleanly(trained_run, tmp_path):
    run_dir, _ = trained_run
    port = _free_port()
    env = {**os.environ, "BITLM_TOKEN": TOKEN}
    argv = [
        sys.executable,
        "-m",
        "bitlm.cli.serve",
        f"ckpt_path={run_dir / 'model'}",
        f"port={port}",
    ]
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        status = wait_for_status(f"http://127.0.0.1:{port}", process)
        assert status["model"] == "HierarchicalBitLM"  # model=tiny
        info = httpx.get(f"http://127.0.0.1:{port}/model_config").json()
        assert "val/bpb" in info["metrics"]  # what the export recorded
        generated = httpx.post(
            f"http://127.0.0.1:{port}/generate",
            json={"prompt": "The ", "max_new_bytes": 8},
            timeout=60,
        )
        assert generated.status_code in (200, 422)  # safety-gated by default: passes or says why
        saved = httpx.post(
            f"http://127.0.0.1:{port}/save_checkpoint", json={"name": "copy"}, headers=AUTH
        )
        assert (
            saved.status_code == 200
            and (tmp_path / "saved_models" / "copy" / "config.json").is_file()
        )
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]
    summary = __import__("json").loads(stdout.strip().splitlines()[-1])
    assert summary["requests"] >= 4


def test_bitlm_serve_bad_input_is_one_line(refused, tmp_path):
    assert_user_error(
        refused("serve", f"ckpt_path={tmp_path / 'nothing'}", cwd=tmp_path), "checkpoint not found"
    )
    assert_user_error(
        refused("serve", "ckpt_path=null", "limits.max_concurrent=0", cwd=tmp_path),
        "max_concurrent",
    )
    assert_user_error(refused("serve", "limits.colour=red", cwd=tmp_path), "colour")
    assert_user_error(
        refused("serve", "limits.body_timeout_s=-1", cwd=tmp_path), "limits.body_timeout_s"
    )
    assert_user_error(refused("serve", "allowed_hosts=5", cwd=tmp_path), "allowed_hosts")


def test_allowed_hosts_add_the_address_served_on_and_refuse_bad_patterns():
    loopback = OmegaConf.create(list(LOOPBACK_HOSTS))
    assert allowed_hosts(loopback, "127.0.0.1") == LOOPBACK_HOSTS
    assert allowed_hosts(loopback, "0.0.0.0") == LOOPBACK_HOSTS  # every address: no name
    assert allowed_hosts(loopback, "::") == LOOPBACK_HOSTS
    assert allowed_hosts(OmegaConf.create(["*"]), "bitlm.lan") == ("*", "bitlm.lan")
    assert allowed_hosts(OmegaConf.create([]), "fd00::5") == ("[fd00::5]",)  # as Host sends it
    for bad in ([5], ["a*b"], ["*x.com"], [""]):
        with pytest.raises(BitLMError, match="allowed_hosts"):
            allowed_hosts(OmegaConf.create(bad), "127.0.0.1")
    with pytest.raises(BitLMError, match="a list of host names"):
        allowed_hosts("localhost", "127.0.0.1")


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


@needs_chromium
def test_dashboard_in_headless_chromium(trained_run, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    run_dir, _ = trained_run
    model = hub.load_model(run_dir / "model")
    app = create_app(model, Settings(token=TOKEN, safety=None), str(run_dir / "model"))
    with live_server(app) as url:
        for step in range(0, 300, 10):  # a training run's reports, with a drift in K at the end
            k = 0.30 + step / 3000 if step < 290 else 0.9
            metrics = {
                "telemetry/K": k,
                "telemetry/C": 0.6,
                "telemetry/S": 0.5 - step / 3000,
                "train/loss": 0.7 - step / 1000,
                "train/bpb": 5.0 - step / 100,
            }
            if step % 50 == 0:
                metrics |= {"val/bpb": 5.2 - step / 100, "val/K": k}
            httpx.post(f"{url}/telemetry", json={"step": step, "metrics": metrics}, headers=AUTH)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            kinds = []  # the generation box streams: /generate answers with server-sent events
            page.on(
                "response",
                lambda r: (
                    kinds.append(r.headers.get("content-type", ""))
                    if r.url.endswith("/generate")
                    else None
                ),
            )
            page.goto(url)
            page.wait_for_selector("figure[data-chart=bpb] polyline[data-series='val/bpb']")
            assert page.locator("svg polyline").count() == 7  # K×2, C, S, loss, bpb×2
            assert page.locator("#no-telemetry").is_hidden()
            assert "step 290: telemetry/K moved +0.537" in page.locator("#warnings").inner_text()
            assert "serving HierarchicalBitLM" in page.locator("#status").inner_text()
            assert "training step 290" in page.locator("#step").inner_text()
            page.wait_for_selector("#config td:text('d_model')")
            page.fill("#prompt", "The ")
            page.fill("#max-new-bytes", "24")
            page.click("#generate-button")
            page.wait_for_selector("#output[data-done='1']", timeout=60000)
            assert page.locator("#output").inner_text().startswith("The ")
            assert "24 bytes" in page.locator("#generation-info").inner_text()
            assert "parity errors 0" in page.locator("#generation-info").inner_text()
            assert kinds and kinds[-1].startswith("text/event-stream")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    assert errors == []
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert Image.open(shot).size[0] == 1280 and len(pixels) >= 1280 * 900

    def near(color) -> int:
        return int((np.abs(pixels - np.array(color)).max(axis=1) < 30).sum())

    # the charts' blue and red lines (and the blue button) were drawn, on a real page
    assert near((37, 99, 235)) > 500 and near((220, 38, 38)) > 100
    assert len(np.unique(pixels, axis=0)) > 50


# --- streaming, the OpenAI-style routes, continuous batching ---------------------------------


def _events(response) -> list:
    """The data of each server-sent event of a streamed response."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else __import__("json").loads(e[6:]) for e in events]


def test_a_streamed_generation_sends_its_text_in_pieces_then_the_report(client):
    body = {"prompt": "Once", "max_new_bytes": 20, "seed": 3, "temperature": 1.0}
    whole = client.post("/generate", json=body).json()
    events = _events(client.post("/generate", json=body | {"stream": True}))
    *pieces, last = events
    assert len(pieces) > 1 and all(set(p) == {"text"} for p in pieces)
    assert "".join(p["text"] for p in pieces) == whole["text"]
    assert last["done"] is True and last["bytes"] == 20 and last["parity_errors"] == 0
    assert last["finish_reason"] == "length"
    stop = whole["text"][8:10]
    stopped = _events(client.post("/generate", json=body | {"stream": True, "stop": stop}))
    text = "".join(e.get("text", "") for e in stopped)
    assert text == whole["text"][: whole["text"].index(stop)]
    assert stopped[-1]["finish_reason"] == "stop"


def test_a_stream_past_its_deadline_or_refused_ends_with_the_error(tmp_path):
    client = TestClient(_app(tmp_path, limits=Limits(timeout_s=0.05)))
    events = _events(client.post("/generate", json={"max_new_bytes": 1000, "stream": True}))
    assert events[-1]["done"] is True and "time limit" in events[-1]["error"]
    infill = {"max_new_bytes": 4, "suffix": "end", "stream": True}
    events = _events(client.post("/generate", json=infill))
    assert events == [{"done": True, "error": events[-1]["error"]}]
    assert "needs a diffusion model" in events[-1]["error"]


def test_a_streamed_sample_is_judged_by_the_safety_gate_at_its_end(tmp_path):
    strict = {"c_floor": 2.0, "max_retries": 3, "backoff_s": 0.0}  # every sample is unsafe
    client = TestClient(_app(tmp_path, safety=strict))
    last = _events(client.post("/generate", json={"max_new_bytes": 16, "stream": True}))[-1]
    assert last["safe"] is False and last["telemetry"]["c_low"] is True


def test_the_openai_client_lists_the_model_and_completes_streamed_or_not(trained_run, tmp_path):
    openai = pytest.importorskip("openai")
    run_dir, _ = trained_run  # a trained model writes text, so a stop string can be found in it
    model = hub.load_model(run_dir / "model")
    app = create_app(model, Settings(token=TOKEN, safety=None, allowed_hosts=TEST_HOSTS))
    with live_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["bitlm"]
        done = client.completions.create(
            model="bitlm", prompt="Hi", max_tokens=12, temperature=0.9, n=2, seed=4
        )
        assert [c.index for c in done.choices] == [0, 1]
        assert all(c.finish_reason == "length" for c in done.choices)
        assert done.usage.prompt_tokens == 2 and done.usage.completion_tokens == 24
        # choice i is seed + i: what /generate gives for that seed
        for choice in done.choices:
            body = {"prompt": "Hi", "max_new_bytes": 12, "temperature": 0.9}
            alone = httpx.post(f"{url}/generate", json=body | {"seed": 4 + choice.index})
            assert choice.text == alone.json()["text"]
        streamed = client.completions.create(
            model="bitlm", prompt="Hi", max_tokens=12, temperature=0.9, n=2, seed=4, stream=True
        )
        texts, reasons = ["", ""], [None, None]
        for chunk in streamed:
            for choice in chunk.choices:
                texts[choice.index] += choice.text
                reasons[choice.index] = choice.finish_reason or reasons[choice.index]
        assert texts == [c.text for c in done.choices] and reasons == ["length", "length"]
        first = done.choices[0].text
        stop = next(c for c in first[1:] if c.isascii() and first.index(c) > 0)
        cut = client.completions.create(
            model="bitlm", prompt="Hi", max_tokens=12, temperature=0.9, seed=4, stop=[stop]
        )
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == first[: first.index(stop)]
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.completions.create(model="gpt-4", prompt="Hi")
        with pytest.raises(openai.UnprocessableEntityError, match="one stop string"):
            client.completions.create(model="bitlm", prompt="Hi", stop=["a", "b"])


def test_32_concurrent_clients_each_get_what_decoding_alone_gives(tmp_path):
    """Distinct prompts, greedy: every answer is its own, intact, with no parity error, while
    the requests decode together in one batch."""
    app = _app(tmp_path, limits=Limits(max_concurrent=16, max_queued=32))
    model = app.state.server.model
    prompts = [f"{i} bottles of {'beer' if i % 2 else 'milk'}" for i in range(32)]
    with live_server(app) as url:

        def one(prompt: str) -> dict:
            body = {"prompt": prompt, "max_new_bytes": 16, "temperature": 0}
            return httpx.post(f"{url}/generate", json=body, timeout=120).json()

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, prompts))
        steps = app.state.server.engine.steps
    for prompt, answer in zip(prompts, answers, strict=True):
        alone = generate(model, prompt.encode(), 16, GenerationOptions(temperature=0))
        assert answer["text"] == alone.decode("utf-8", errors="replace")
        assert answer["parity_errors"] == 0 and answer["bytes"] == 16
    assert steps < 32 * 16 / 2  # batched: far fewer byte steps than bytes made
