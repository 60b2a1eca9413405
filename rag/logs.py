"""One structured log line per request, and logging set-up.

The line carries ids, timings and token counts; never a secret, and never more
than the first few characters of anything a reader typed.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("rag.access")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # httpx logs full URLs at INFO; keep it quiet (URLs could carry keys on odd servers).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # One line per request is ours (`rag.access`); uvicorn's own would be a second.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


class RequestLogMiddleware:
    """Assigns a request id and logs one JSON line when the response is finished."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = uuid.uuid4().hex[:16]
        status = 0
        complete = False  # the whole response went out

        async def send_wrapper(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = status or 500  # the error middleware outside answers 500
            complete = True
            raise
        finally:
            turn = state.get("turn")
            line = {
                "request_id": state["request_id"],
                "method": scope["method"],
                "route": scope["path"][:100],
                # 499: the client closed the connection before any response (nginx's code).
                "status": status or 499,
                "total_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if not complete:
                line["disconnected"] = True
            if turn is not None:
                line.update(
                    mode=turn.mode,
                    retrieval_ms=_ms(turn.retrieval_ms),
                    first_token_ms=_ms(turn.first_token_ms),
                    tokens=turn.tokens,
                    error=turn.error,
                )
            logger.info(json.dumps(line, separators=(",", ":")))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
