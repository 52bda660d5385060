"""Chat messages -> prompt token ids through the model's own chat template; raw text -> ids for completions.

Message content is text, never markup: a user who writes ``<start_of_turn>`` or ``<bos>`` gets those characters
tokenized as ordinary text, not the control tokens (no turn injection). The template is rendered around
placeholders, its own pieces are tokenized with special tokens recognised, each content piece with special-token
splitting on, and the ids are joined.
"""

from __future__ import annotations

import secrets
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
            text = _template(tokenizer, msgs)
            pieces = _pieces(tokenizer, msgs, text)
        except Exception as exc:  # jinja2 TemplateError / raise_exception in the template
            error = exc
            continue
        ids: list[int] = []
        for piece, is_content in pieces:
            ids += _encode(tokenizer, piece, split_special=is_content)
        return ids
    raise APIError(f"the messages do not fit the model's chat template: {error}", param="messages", code="invalid_value")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """A raw completions prompt: tokenized as the tokenizer does (special-token strings are recognised, the
    caller may write the template by hand), with one BOS in front when the tokenizer has one."""
    ids = list(tokenizer.encode(text, add_special_tokens=True))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


_LONGEST: dict[int, tuple[Any, int]] = {}  # id(tokenizer) -> (the tokenizer, kept so its id is not reused; bytes)


def at_least_tokens(tokenizer: Any, n_bytes: int) -> int:
    """A lower bound on how many tokens ``n_bytes`` of UTF-8 text take: no token spells more bytes than the
    vocabulary's longest entry. Lets a prompt that cannot fit be refused without tokenizing it."""
    cached = _LONGEST.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        longest = max((len(t.encode("utf-8", "replace")) for t in tokenizer.get_vocab()), default=1) or 1
        cached = _LONGEST[id(tokenizer)] = (tokenizer, longest)
    return -(-n_bytes // cached[1])


def _template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _encode(tokenizer: Any, text: str, *, split_special: bool) -> list[int]:
    if not text:
        return []
    if split_special:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return list(tokenizer.encode(text, add_special_tokens=False))


def _pieces(tokenizer: Any, messages: list[dict[str, str]], text: str) -> list[tuple[str, bool]]:
    """``text`` (the template rendered with the real content) cut into (piece, is_content) pieces.

    The template is rendered again with a placeholder per message; the text between placeholders is the
    template's own. Content may be changed by the template (Gemma's trims it): each content piece is taken as
    the message's text or its stripped text, whichever makes the pieces add up to ``text`` exactly.
    """
    nonce = secrets.token_hex(8)
    marks = [f"NSPH{nonce}X{i}X" for i in range(len(messages))]
    shown = _template(tokenizer, [{**m, "content": mark} for m, mark in zip(messages, marks)])
    # the template's pieces between the placeholders, in order of appearance
    order: list[int] = []
    rest, frame = shown, []
    while True:
        found = [(rest.find(mark), i) for i, mark in enumerate(marks) if mark in rest]
        if not found:
            frame.append(rest)
            break
        at, i = min(found)
        frame.append(rest[:at])
        order.append(i)
        rest = rest[at + len(marks[i]):]
    pieces: list[tuple[str, bool]] = [(frame[0], False)]
    pos = len(frame[0])
    if not text.startswith(frame[0]):
        raise ValueError("the chat template renders differently each time")
    for k, i in enumerate(order):
        content, after = messages[i]["content"], frame[k + 1]
        for variant in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = pos + len(variant)
            if text.startswith(variant, pos) and text.startswith(after, end) and (
                    k + 1 < len(order) or end + len(after) == len(text)):
                break
        else:
            raise ValueError("the chat template changes message content in a way this server cannot follow")
        pieces += [(variant, True), (after, False)]
        pos = end + len(after)
    return pieces


def _rejects_system(tokenizer: Any) -> bool:
    tpl = tokenizer.chat_template
    return isinstance(tpl, str) and "System role not supported" in tpl
