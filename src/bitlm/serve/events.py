"""Server-sent events: how the streaming routes (``/generate`` and ``/v1/completions`` with
``"stream": true``) frame what they send and release what they hold when a stream ends."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from bitlm.core.errors import BitLMError


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event carrying ``data`` (JSON unless a string)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def event_stream(events: AsyncIterator[str], admission: contextlib.ExitStack) -> StreamingResponse:
    """A ``text/event-stream`` response of ``events``; ``admission`` is released when the
    stream ends, also when the client left before it began."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(admission.close),
    )


async def guarded(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``items``, ending with ``{"error": message}`` instead of raising a user-facing error
    (past its deadline, refused by a check) once the response has begun: its status is sent."""
    try:
        async for item in items:
            yield item
    except BitLMError as err:
        yield {"error": str(err)}
