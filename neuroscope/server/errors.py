"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``, and the one error middleware both
applications use: whatever a handler raises leaves as such an error, never as aiohttp's plain-text 500."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web

log = logging.getLogger("neuroscope.server")
# the id a request is known by (set by the generation endpoints to the id of its feature events); a 500 names it
REQUEST_ID = web.RequestKey("neuroscope_request_id", str)


class APIError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        close: bool = False,
    ):
        """``close``: close the connection after the answer (the rest of a body that was not read)."""
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.close = close

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        resp = web.json_response(self.body(), status=self.status, headers=headers)
        if self.close:
            resp.force_close()
        return resp


def error_response(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None):
    return APIError(message, status=status, type=type, code=code).response()


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:24]}"


def internal_error(request_id: str) -> web.Response:
    """The answer to a failure this server did not foresee: a JSON 500 naming the request, details in the log."""
    return APIError(f"the server failed on this request (request id {request_id}); its log has the details",
                    status=500, type="server_error", code="internal_error").response({"X-Request-Id": request_id})


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every failure on either port leaves as OpenAI-shaped JSON; the server keeps running. An unexpected
    exception is logged once, with its traceback, and answered with a 500 that names the request id (when a
    streamed response had already begun, the connection is closed instead)."""
    try:
        return await handler(request)
    except APIError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        return error_response(exc.status, exc.reason or "error", code=code)
    except ConnectionError:  # the client went away
        raise
    except Exception:
        request_id = request.get(REQUEST_ID) or new_request_id()
        log.exception("internal error on %s %s (request id %s)", request.method, request.path, request_id)
        if request.writer.output_size > 0:
            raise ConnectionResetError("a response was already started; the connection is closed") from None
        return internal_error(request_id)
