"""A model checkpoint on disk: where it is, its config, its tokenizer and its end-of-sequence ids.

Shared by every backend, so they all read a checkpoint the same way (framework-free: transformers is used
only for the tokenizer, huggingface_hub for the download).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from neuroscope.core.loading import model_load_error
from neuroscope.core.protocol import ModelSpec

# what serving needs from a model repo (config, tokenizer, weights), never the rest (e.g. GGUF or PyTorch bins)
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]


def local_dir(model: ModelSpec) -> Path:
    """A local directory as is; a hub id through huggingface_hub's cache (never the network when offline)."""
    path = Path(model.name_or_path).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                model.name_or_path, revision=model.revision, allow_patterns=ALLOW_PATTERNS,
                local_files_only=model.offline,
            )
        )
    except (OSError, ValueError) as exc:  # huggingface_hub's errors derive from these
        raise model_load_error(model.name_or_path, exc) from exc


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise model_load_error(str(path), FileNotFoundError(f"{path} holds no config.json")) from None
    except (OSError, ValueError) as exc:
        raise model_load_error(str(path), exc) from exc
    if not isinstance(config, dict):
        raise model_load_error(str(path), ValueError("config.json is not a JSON object"))
    return config


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise model_load_error(str(path), exc) from exc
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = path / CHAT_TEMPLATE_FILE
    if not getattr(tokenizer, "chat_template", None) and template.is_file():
        # newer transformers save the template there (and many hub repos ship it so); older ones do not read it
        try:
            tokenizer.chat_template = template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise model_load_error(str(path), exc) from exc
    return tokenizer


def eos_token_ids(path: Path, config: dict[str, Any], tokenizer: Any) -> tuple[int, ...]:
    """Every EOS id named by the config, ``generation_config.json`` and the tokenizer, plus ``<end_of_turn>``
    (Gemma's end of a chat turn) when the vocabulary has it."""
    sources: list[Any] = [config.get("eos_token_id")]
    gen_cfg = path / "generation_config.json"
    if gen_cfg.is_file():
        try:
            sources.append(json.loads(gen_cfg.read_text(encoding="utf-8")).get("eos_token_id"))
        except (OSError, ValueError, AttributeError):
            pass
    return tuple(sorted(_ids(sources) | _tokenizer_eos(tokenizer)))


def _ids(sources: Iterable[Any]) -> set[int]:
    out: set[int] = set()
    for e in sources:
        if isinstance(e, int):
            out.add(e)
        elif isinstance(e, (list, tuple)):
            out.update(int(x) for x in e)
    return out


def _tokenizer_eos(tokenizer: Any) -> set[int]:
    out = set()
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        out.add(eot)
    return out
