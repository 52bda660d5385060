"""Chat messages -> prompt token ids, through the model's own chat template."""

from __future__ import annotations

from typing import Any

from neuroscope.server.errors import APIError
from neuroscope.server.schema import fold_system


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Apply the chat template (folding system messages into the first user turn when the template has no
    system role) and tokenize. Template errors (e.g. roles that do not alternate) become 400s."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise APIError("the served model has no chat template", status=500, type="server_error", code="no_chat_template")
    attempts = [messages]
    if any(m["role"] in ("system", "developer") for m in messages):
        attempts = [fold_system(messages)] if _rejects_system(tokenizer) else [messages, fold_system(messages)]
    error: Exception | None = None
    for msgs in attempts:
        msgs = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in msgs]
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 TemplateError / raise_exception in the template
            error = exc
            continue
        return list(tokenizer.encode(text, add_special_tokens=False))
    raise APIError(f"the messages do not fit the model's chat template: {error}", param="messages", code="invalid_value")


def _rejects_system(tokenizer: Any) -> bool:
    tpl = tokenizer.chat_template
    return isinstance(tpl, str) and "System role not supported" in tpl
