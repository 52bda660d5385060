"""Validation of ``POST /v1/chat/completions`` bodies (OpenAI's schema, the subset this server serves)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from neuroscope.protocol import Steering
from neuroscope.server.errors import APIError
from neuroscope.steering import SteeringError, parse_steering

ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED_ROLES = ("tool", "function")
MAX_STOP = 4
# parameters a client may send that this server accepts and ignores (they do not change greedy semantics
# enough to refuse a request); anything that would silently change the result is refused instead
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prediction", "modalities",
           "reasoning_effort", "frequency_penalty", "presence_penalty", "logit_bias", "response_format"}


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    steering: Steering | None = None


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value", status: int = 400) -> APIError:
    return APIError(message, status=status, param=param, code=code)


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise _bad(f"'{key}' must be a number", key, "invalid_type")
    if not lo <= v <= hi:
        raise _bad(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return float(v)


def _int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{key}' must be an integer", key, "invalid_type")
    return v


def _bool(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(f"'{key}' must be a boolean", key, "invalid_type")
    return v


def _content(msg: dict, i: int) -> str:
    content = msg.get("content")
    param = f"messages[{i}].content"
    if content is None:
        if msg.get("role") == "assistant":
            return ""
        raise _bad(f"'{param}' is required", param, "missing_required_parameter")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"'{param}[{j}]' must be an object with a 'type'", param, "invalid_type")
            if part["type"] != "text":
                raise _bad(f"content part type {part['type']!r} is not supported (text only)", param, "unsupported_value")
            if not isinstance(part.get("text"), str):
                raise _bad(f"'{param}[{j}].text' must be a string", param, "invalid_type")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"'{param}' must be a string or a list of content parts", param, "invalid_type")


def _steering(body: dict, d_sae: int | None) -> Steering | None:
    if body.get("steering") is None:
        return None
    if d_sae is None:
        raise _bad("'steering' is not supported by this server", "steering", "unsupported_parameter")
    try:
        return parse_steering(body["steering"], d_sae)
    except SteeringError as exc:
        raise _bad(exc.message, exc.param, exc.code) from None


def parse_chat_request(body: Any, *, served_model: str, d_sae: int | None = None) -> ChatRequest:
    """``d_sae``: the SAE's width, which bounds a steered feature's index (None: steering is refused)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    model = body.get("model", served_model)
    if not isinstance(model, str):
        raise _bad("'model' must be a string", "model", "invalid_type")
    if model != served_model:
        raise APIError(
            f"The model '{model}' does not exist; this server serves '{served_model}'",
            status=404, param="model", code="model_not_found",
        )
    messages = body.get("messages")
    if messages is None:
        raise _bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages", "invalid_type")
    if not messages:
        raise _bad("'messages' must contain at least one message", "messages", "empty_array")
    parsed = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"'messages[{i}]' must be an object", f"messages[{i}]", "invalid_type")
        role = msg.get("role")
        if not isinstance(role, str):
            raise _bad(f"'messages[{i}].role' must be a string", f"messages[{i}].role", "invalid_type")
        if role in UNSUPPORTED_ROLES:
            raise _bad(f"role {role!r} is not supported by this server (no tool calling)", f"messages[{i}].role", "unsupported_value")
        if role not in ROLES:
            raise _bad(f"unknown role {role!r} in messages[{i}]; use one of {', '.join(ROLES)}", f"messages[{i}].role")
        parsed.append({"role": role, "content": _content(msg, i)})
    n = _int(body, "n")
    if n is not None and n != 1:
        raise _bad("only n=1 is supported", "n", "unsupported_value")
    for key in ("tools", "functions"):
        if body.get(key):
            raise _bad(f"'{key}' is not supported by this server", key, "unsupported_parameter")
    if body.get("logprobs"):
        raise _bad("'logprobs' is not supported by this server", "logprobs", "unsupported_parameter")
    max_tokens = _int(body, "max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _int(body, "max_tokens"), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise _bad(f"'{key}' must be at least 1, got {max_tokens}", key)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise _bad("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOP:
        raise _bad(f"'stop' may hold at most {MAX_STOP} strings", "stop")
    if any(s == "" for s in stops):
        raise _bad("'stop' strings must not be empty", "stop")
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        v = opts.get("include_usage", False)
        if not isinstance(v, bool):
            raise _bad("'stream_options.include_usage' must be a boolean", "stream_options.include_usage", "invalid_type")
        include_usage = v
    seed = _int(body, "seed")
    return ChatRequest(
        messages=parsed,
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0) or 1e-9,
        seed=seed,
        stop=stops,
        stream=stream,
        include_usage=include_usage,
        steering=_steering(body, d_sae),
    )


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Gemma's template has no system role: system/developer text is put before the first user turn."""
    system = [m["content"] for m in messages if m["role"] in ("system", "developer")]
    rest = [dict(m) for m in messages if m["role"] not in ("system", "developer")]
    if not system:
        return rest
    prefix = "\n\n".join(s for s in system if s)
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{prefix}\n\n{m['content']}" if prefix else m["content"]
            return rest
    return [{"role": "user", "content": prefix}, *rest]
