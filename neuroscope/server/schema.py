"""Validation of ``POST /v1/chat/completions`` and ``POST /v1/completions`` bodies (OpenAI's schema, the subset
this server serves). Every parameter is either honoured, accepted as harmless (``HARMLESS``) or refused with a
400 that names it: nothing a client sends is silently ignored."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from neuroscope.core.protocol import Steering
from neuroscope.core.steering import SteeringError, parse_steering
from neuroscope.server.errors import APIError

ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED_ROLES = ("tool", "function")
MAX_STOP = 4
MAX_STOP_LENGTH = 1024  # characters in one stop string
# accepted and without effect on the output: bookkeeping for the client (user, metadata, store, service_tier),
# a latency hint (prediction), tool-call parallelism when no tools are sent (parallel_tool_calls)
HARMLESS = frozenset({"user", "metadata", "store", "service_tier", "prediction", "parallel_tool_calls"})
# parameters of both endpoints that are honoured (validated below)
COMMON = frozenset({"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options",
                    "steering", "n", "logit_bias", "presence_penalty", "frequency_penalty", "logprobs"})
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETIONS = COMMON | {"prompt"}
MAX_BIAS = 100.0
MAX_PENALTY = 2.0
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs
MAX_COMPLETION_LOGPROBS = 5  # the completions endpoint's integer logprobs
# known OpenAI parameters that are refused unless they hold their neutral value (the value that changes nothing)
NEUTRAL: dict[str, tuple] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "response_format": (None, {"type": "text"}),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "echo": (None, False),  # completions
    "suffix": (None, ""),  # completions
    "best_of": (None, 1),  # completions
}
WHY = {
    "tools": "not supported by this server (no tool calling)",
    "tool_choice": "not supported by this server (no tool calling; only \"none\")",
    "functions": "not supported by this server (no function calling)",
    "function_call": "not supported by this server (no function calling; only \"none\")",
    "audio": "not supported by this server (text only)",
    "modalities": 'not supported by this server (only ["text"])',
    "response_format": 'not supported by this server (only {"type": "text"}: no JSON mode or structured output)',
    "reasoning_effort": "not supported by this server (not a reasoning model)",
    "web_search_options": "not supported by this server",
    "echo": "not supported by this server (only false)",
    "suffix": "not supported by this server (no insertion)",
    "best_of": "not supported by this server (only 1)",
}


def _neutral(value: Any, allowed: tuple) -> bool:
    # bool is an int subclass: True must not pass as 1, nor False as 0
    return any(type(value) is type(a) and value == a for a in allowed if a is not None) or value is None


def check_parameters(body: dict, honoured: frozenset) -> None:
    """Refuse every parameter that is neither honoured, harmless nor at its neutral value, naming it."""
    for key, value in body.items():
        if key in honoured or key in HARMLESS:
            continue
        if key in NEUTRAL:
            if not _neutral(value, NEUTRAL[key]):
                raise _bad(f"'{key}' is {WHY[key]}", key, "unsupported_parameter")
            continue
        raise _bad(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")


@dataclass(kw_only=True)
class SamplingRequest:
    """What both endpoints share."""

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    steering: Steering | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: off; n: the chosen token's logprob and the top n


@dataclass(kw_only=True)
class ChatRequest(SamplingRequest):
    messages: list[dict[str, str]]


@dataclass(kw_only=True)
class CompletionRequest(SamplingRequest):
    prompt: str | list[int]  # text (tokenized with BOS, special-token strings parsed) or token ids as given


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value", status: int = 400) -> APIError:
    return APIError(message, status=status, param=param, code=code)


def _shown(v: int | float) -> str:
    """A number as an error message quotes it (an integer of thousands of digits is described, not repeated)."""
    text = str(v)
    return text if len(text) <= 24 else f"an integer of {len(text.lstrip('-'))} digits"


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise _bad(f"'{key}' must be a number", key, "invalid_type")
    if not lo <= v <= hi:
        raise _bad(f"'{key}' must be between {lo} and {hi}, got {_shown(v)}", key)
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


# content part types that carry an image (OpenAI chat, OpenAI responses, Anthropic-style); Gemma 3 4B and up are
# multimodal checkpoints, but Neuroscope serves every model as text
IMAGE_PARTS = ("image_url", "input_image", "image")


def _content(msg: dict, i: int, served_model: str) -> str:
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
            if part["type"] in IMAGE_PARTS:
                raise _bad(f"'{param}[{j}]' is an image ({part['type']!r}): images are not supported, because "
                           f"{served_model} is served as text only; send text content parts", f"{param}[{j}]",
                           "unsupported_value")
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


def served_names(model_id: str, aliases: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The names a request's ``model`` may use: the served id, its last path component, the aliases."""
    names = [model_id, model_id.rstrip("/").rsplit("/", 1)[-1], *aliases]
    return tuple(dict.fromkeys(n for n in names if n))


def _model(body: dict, served_model: str, aliases) -> str:
    model = body.get("model")
    if model is None or model == "":
        return served_model
    if not isinstance(model, str):
        raise _bad("'model' must be a string", "model", "invalid_type")
    if model not in served_names(served_model, aliases):
        raise APIError(
            f"The model '{model}' does not exist; this server serves '{served_model}'",
            status=404, param="model", code="model_not_found",
        )
    return served_model


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    return body


def _logit_bias(body: dict, n_logits: int | None) -> tuple[tuple[int, float], ...]:
    v = body.get("logit_bias")
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise _bad("'logit_bias' must be an object mapping token ids to bias values", "logit_bias", "invalid_type")
    hi = n_logits if n_logits is not None else 2**31
    out: dict[int, float] = {}
    for key, bias in v.items():
        try:
            tid = int(key)
        except ValueError:
            tid = None
        if tid is None or str(tid) != key.strip() or not 0 <= tid < hi:
            raise _bad(f"'logit_bias' key {key!r} is not a token id in the vocabulary (0..{hi - 1})", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or (
                isinstance(bias, float) and not math.isfinite(bias)):
            raise _bad(f"'logit_bias' value for token {key} must be a number", "logit_bias", "invalid_type")
        if not -MAX_BIAS <= bias <= MAX_BIAS:  # exact for integers of any size
            raise _bad(f"'logit_bias' value for token {key} must be between -100 and 100, got {_shown(bias)}",
                       "logit_bias")
        out[tid] = float(bias)
    return tuple((t, b) for t, b in out.items() if b != 0.0)


def _chat_logprobs(body: dict) -> int | None:
    """Chat: ``logprobs`` (bool) turns them on, ``top_logprobs`` (0..20) asks for the n most likely too."""
    on = _bool(body, "logprobs")
    top = _int(body, "top_logprobs")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise _bad(f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", "top_logprobs")
    if not on:
        if top:
            raise _bad("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
        return None
    return top or 0


def _completion_logprobs(body: dict) -> int | None:
    """Completions: ``logprobs`` is an integer 0..5 (the top n; null: off)."""
    n = _int(body, "logprobs")
    if n is not None and not 0 <= n <= MAX_COMPLETION_LOGPROBS:
        raise _bad(f"'logprobs' must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {n}", "logprobs")
    return n


def _sampling(body: dict, *, served_model: str, aliases, d_sae: int | None, max_keys: tuple[str, ...],
              n_logits: int | None = None) -> dict:
    """The fields of :class:`SamplingRequest` (``max_keys``: the names of the length limit, first wins)."""
    model = _model(body, served_model, aliases)
    n = _int(body, "n")
    if n is not None and n != 1:
        raise _bad("only n=1 is supported", "n", "unsupported_value")
    max_tokens, key = None, max_keys[-1]
    for key in max_keys:
        max_tokens = _int(body, key)
        if max_tokens is not None:
            break
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
    if any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise _bad(f"'stop' strings may be at most {MAX_STOP_LENGTH} characters long", "stop")
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
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise _bad("'seed' must be between -2**63 and 2**64 - 1", "seed")
    return dict(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(body, "top_p", 0.0, 1.0, 1.0) or 1e-9,
        seed=seed,
        stop=stops,
        stream=stream,
        include_usage=include_usage,
        steering=_steering(body, d_sae),
        logit_bias=_logit_bias(body, n_logits),
        presence_penalty=_number(body, "presence_penalty", -MAX_PENALTY, MAX_PENALTY, 0.0),
        frequency_penalty=_number(body, "frequency_penalty", -MAX_PENALTY, MAX_PENALTY, 0.0),
    )


def parse_chat_request(body: Any, *, served_model: str, aliases: tuple[str, ...] = (),
                       d_sae: int | None = None, n_logits: int | None = None) -> ChatRequest:
    """``d_sae``: the SAE's width, which bounds a steered feature's index (None: steering is refused).
    ``aliases``: more names ``model`` may use besides the served id and its last path component.
    ``n_logits``: the model's vocabulary (logits) size, which bounds ``logit_bias`` keys."""
    body = _object(body)
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
        parsed.append({"role": role, "content": _content(msg, i, served_model)})
    fields = _sampling(body, served_model=served_model, aliases=aliases, d_sae=d_sae,
                       max_keys=("max_completion_tokens", "max_tokens"), n_logits=n_logits)
    fields["logprobs"] = _chat_logprobs(body)
    check_parameters(body, CHAT)
    return ChatRequest(messages=parsed, **fields)


def parse_completion_request(body: Any, *, served_model: str, aliases: tuple[str, ...] = (),
                             d_sae: int | None = None, vocab_size: int | None = None,
                             n_logits: int | None = None) -> CompletionRequest:
    """``prompt``: a string, or a list holding one string or token ids (``vocab_size`` bounds them)."""
    body = _object(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("'prompt' is required", "prompt", "missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt:
            raise _bad("'prompt' must not be empty", "prompt", "empty_array")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise _bad("'prompt' must be a string, an array of token ids, or an array of one of those "
                       "(batches of several prompts are not supported)", "prompt", "invalid_type")
        hi = vocab_size if vocab_size is not None else 2**31
        bad = next((t for t in prompt if not 0 <= t < hi), None)
        if bad is not None:
            raise _bad(f"'prompt' holds token id {bad}, outside the vocabulary (0..{hi - 1})", "prompt")
    elif not isinstance(prompt, str):
        raise _bad("'prompt' must be a string or an array of token ids", "prompt", "invalid_type")
    elif not prompt:
        raise _bad("'prompt' must not be empty", "prompt", "invalid_value")
    fields = _sampling(body, served_model=served_model, aliases=aliases, d_sae=d_sae, max_keys=("max_tokens",),
                       n_logits=n_logits)
    fields["logprobs"] = _completion_logprobs(body)
    check_parameters(body, COMPLETIONS)
    return CompletionRequest(prompt=prompt, **fields)


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
