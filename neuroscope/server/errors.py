"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from aiohttp import web


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


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every failure on the chat port leaves as OpenAI-shaped JSON; the server keeps running."""
    try:
        return await handler(request)
    except APIError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        return error_response(exc.status, exc.reason or "error", code=code)
