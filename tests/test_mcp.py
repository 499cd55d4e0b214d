"""bitlm-mcp, driven as an MCP client drives it: a subprocess speaking the protocol on stdio;
and, for what the protocol cannot carry, its tools called in-process."""

from __future__ import annotations

import json
import sys

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.mcpserver.exceptions import ToolError

from bitlm.cli.mcp_server import build_server
from bitlm.evaluation.bpb import text_bpb
from bitlm.generation import text_telemetry
from bitlm.io import load_model
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.serve.settings import Settings

from .conftest import ENGLISH, assert_user_error


async def _session_calls(model_dir, calls, *overrides):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "bitlm.cli.mcp_server", f"ckpt_path={model_dir}", *overrides],
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        results = [await session.call_tool(name, arguments) for name, arguments in calls]
        return tools, results


def _payload(result) -> dict:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


@pytest.fixture(scope="module")
def mcp_results(trained_run):
    run_dir, _ = trained_run
    calls = [
        ("generate", {"prompt": "The ", "max_new_bytes": 16, "seed": 1}),
        ("evaluate", {"text": (ENGLISH * 3)[:400]}),
        ("telemetry", {"text": ENGLISH[:200]}),
        ("generate", {"prompt": "x", "max_new_bytes": 5000}),
        ("evaluate", {"text": ""}),
        ("generate", {"prompt": 3}),
        ("generate", {"prompt": "x", "seed": 2**70}),
        ("generate", {"prompt": "x", "colour": "red"}),
    ]
    tools, results = anyio.run(_session_calls, run_dir / "model", calls, "safety.enabled=false")
    return run_dir, tools, results


def test_tools_are_listed_with_their_schemas(mcp_results):
    _, tools, _ = mcp_results
    by_name = {tool.name: tool for tool in tools.tools}
    assert set(by_name) == {"generate", "evaluate", "telemetry"}
    generate = by_name["generate"].input_schema
    assert {"prompt", "max_new_bytes", "seed", "top_p", "stop", "suffix"} <= set(
        generate["properties"]
    )  # POST /generate's fields
    assert generate["properties"]["seed"]["exclusiveMaximum"] == 2**63
    assert generate["additionalProperties"] is False
    assert by_name["evaluate"].input_schema["required"] == ["text"]
    assert "Bits per byte" in by_name["evaluate"].description


def test_generate_evaluate_and_telemetry_answer_like_the_library(mcp_results):
    run_dir, _, results = mcp_results
    generated = _payload(results[0])
    assert generated["bytes"] == 16 and generated["parity_errors"] == 0
    model = load_model(run_dir / "model")
    evaluated = _payload(results[1])
    assert evaluated["bytes"] == 400
    assert evaluated["bpb"] == pytest.approx(
        text_bpb(model, (ENGLISH * 3)[:400].encode()), rel=1e-5
    )
    assert evaluated["references"]["gzip-9"] > 0
    telemetry = _payload(results[2])
    expected = text_telemetry(model, ENGLISH[:200].encode())
    assert telemetry == pytest.approx(expected, rel=1e-5)
    assert 0 <= telemetry["K"] <= 1 and 0 <= telemetry["C"] <= 1 and 0 <= telemetry["S"] <= 1


def test_bad_tool_arguments_are_tool_errors_naming_the_argument(mcp_results):
    _, _, results = mcp_results
    expected = [
        "max_new_bytes is at most 1024 on this server",
        "text\n  String should have at least 1 character",
        "prompt\n  Input should be a valid string",
        "seed\n  Input should be less than 9223372036854775808",
        "colour\n  Extra inputs are not permitted",  # as bitlm-serve refuses unknown fields
    ]
    for result, message in zip(results[3:], expected, strict=True):
        assert result.is_error and message in result.content[0].text


def test_text_without_a_utf8_encoding_is_a_tool_error():
    """A lone surrogate cannot cross the stdio transport (the SDK's client cannot write it and
    its server's JSON parser refuses it), so the tools' own check is called in-process."""
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2, max_seq_len=144)).eval()
    server = build_server(model, Settings(safety=None))
    for tool, arguments in [
        ("generate", {"prompt": "ok \ud800"}),
        ("generate", {"prompt": "ok", "stop": "\udfff"}),
        ("evaluate", {"text": "\ud800"}),
        ("telemetry", {"text": "\ud800"}),
    ]:
        with pytest.raises(ToolError) as refused:
            anyio.run(server.call_tool, tool, arguments)
        field = list(arguments)[-1]
        assert f"{field}\n  Value error, the text is not valid Unicode" in str(refused.value)
        assert "cannot be encoded as UTF-8" in str(refused.value)
    options = {"prompt": "ab", "max_new_bytes": 4, "top_p": 0.5, "seed": 2}  # /generate's
    assert anyio.run(server.call_tool, "generate", options).structured_content["bytes"] == 4


def test_safety_gated_generation_reports_its_telemetry(trained_run):
    run_dir, _ = trained_run
    lenient = ("safety.c_floor=0", "safety.s_floor=-1")
    calls = [("generate", {"prompt": "The ", "max_new_bytes": 8})]
    _, [result] = anyio.run(_session_calls, run_dir / "model", calls, *lenient)
    payload = _payload(result)
    assert payload["attempts"] == 1 and "S" in payload["telemetry"]


def test_bitlm_mcp_without_a_model_is_one_line(refused, tmp_path):
    assert_user_error(refused("mcp_server", cwd=tmp_path), "needs a model")
