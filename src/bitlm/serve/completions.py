"""The OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/completions``, answered as
the OpenAI Python client expects (``openai.OpenAI(base_url=…/v1).completions.create``).

A token is a byte: ``max_tokens`` and ``usage`` count bytes. Each prompt's ``n`` choices use
seeds ``seed + i`` and decode in the server's running batch beside every other request, each
safety-gated as ``/generate`` is (re-sampled until it passes; 422 when none does). Streamed
choices (``"stream": true``) arrive as ``text_completion`` chunks and ``data: [DONE]``; the
safety gate judges a streamed choice at its end, and one it rejects ends with
``finish_reason: "content_filter"``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException
from starlette.responses import StreamingResponse

from bitlm.generation import GenerationOptions
from bitlm.model import BitModel
from bitlm.serve.events import event_stream, guarded, sse
from bitlm.serve.schemas import CompletionRequest
from bitlm.serve.settings import Settings


class Server(Protocol):
    """What these routes use of ``bitlm.serve.app.Server`` (which imports this module)."""

    settings: Settings
    model: BitModel | None
    started: float

    def served_model(self) -> BitModel: ...

    def admitted(self, requests: int = 1) -> AbstractContextManager[float]: ...

    async def generate_text(
        self, model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions
    ) -> dict[str, Any]: ...

    def follow(
        self, model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions
    ) -> AsyncIterator[str | dict[str, Any]]: ...


def add_completion_routes(app: FastAPI, server: Server) -> None:
    """``/v1/models`` and ``/v1/completions`` on ``app``, answered by ``server``."""
    created = int(server.started)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        name = server.settings.model_name
        entry = {"id": name, "object": "model", "created": created, "owned_by": "bitlm"}
        return {"object": "list", "data": [entry] if server.model is not None else []}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        if body.model != server.settings.model_name:
            raise HTTPException(
                404, f"model {body.model!r} is not served here; use {server.settings.model_name!r}"
            )
        if body.stream:
            return await _stream(server, body)
        return await _complete(server, body)


def _choices(body: CompletionRequest) -> list[tuple[int, bytes, int]]:
    """``(index, prompt, seed offset)`` of every choice: prompt by prompt, ``n`` each."""
    return [
        (p * body.n + i, prompt.encode(), i)
        for p, prompt in enumerate(body.prompts)
        for i in range(body.n)
    ]


def _envelope(body: CompletionRequest, ident: str, choices: list[dict]) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": choices,
    }


async def _complete(server: Server, body: CompletionRequest) -> dict[str, Any]:
    """Every choice, decoded concurrently (so in one batch), then one answer."""
    model = server.served_model()
    body.check_limits(server.settings.limits)
    choices = _choices(body)
    with server.admitted(len(choices)) as deadline:
        results = await asyncio.gather(
            *(
                server.generate_text(
                    model, prompt, body.max_tokens, body.generation_options(i, deadline)
                )
                for _, prompt, i in choices
            )
        )
    answers = [
        {
            "text": result["text"],
            "index": index,
            "logprobs": None,
            "finish_reason": "length" if result["bytes"] >= body.max_tokens else "stop",
        }
        for (index, _, _), result in zip(choices, results, strict=True)
    ]
    completion = sum(result["bytes"] for result in results)
    prompt_bytes = sum(len(p.encode()) for p in body.prompts)
    usage = {
        "prompt_tokens": prompt_bytes,
        "completion_tokens": completion,
        "total_tokens": prompt_bytes + completion,
    }
    return _envelope(body, f"cmpl-{uuid.uuid4().hex}", answers) | {"usage": usage}


async def _stream(server: Server, body: CompletionRequest) -> StreamingResponse:
    """The choices as one event stream: their pieces interleaved as they come, each choice's
    last chunk with its ``finish_reason``, then ``[DONE]``."""
    model = server.served_model()
    body.check_limits(server.settings.limits)
    choices = _choices(body)
    admission = ExitStack()
    deadline = admission.enter_context(server.admitted(len(choices)))
    ident = f"cmpl-{uuid.uuid4().hex}"
    merged: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

    async def follow_one(index: int, prompt: bytes, seed_offset: int) -> None:
        options = body.generation_options(seed_offset, deadline)
        async for item in guarded(server.follow(model, prompt, body.max_tokens, options)):
            await merged.put((index, item))

    def chunk(index: int, text: str, finish: str | None) -> str:
        entry = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        return sse(_envelope(body, ident, [entry]))

    async def events() -> AsyncIterator[str]:
        with admission:
            tasks = [asyncio.create_task(follow_one(*c)) for c in choices]
            finished = asyncio.gather(*tasks)
            finished.add_done_callback(lambda _: merged.put_nowait(None))
            try:
                while (item := await merged.get()) is not None:
                    index, piece = item
                    if isinstance(piece, str):
                        yield chunk(index, piece, None)
                    elif "error" in piece:
                        yield sse({"error": {"message": piece["error"], "type": "server_error"}})
                    else:
                        unsafe = piece.get("safe") is False
                        yield chunk(
                            index, "", "content_filter" if unsafe else piece["finish_reason"]
                        )
                yield sse("[DONE]")
            finally:
                for task in tasks:
                    task.cancel()

    return event_stream(events(), admission)
