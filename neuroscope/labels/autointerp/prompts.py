"""What the labeler and the scorer are asked, the JSON schemas of their answers, and how answers are checked.

Labelling follows the published recipe (OpenAI's automated-interpretability, EleutherAI's delphi): ~32-token
windows around a feature's strongest activations, the tokens where it fires marked ``<<like this>>``, and a
structured answer. Detection scoring shows the label and a shuffled, numbered mix of activating and random
non-activating windows, unmarked, and asks for one 0/1 per window.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from neuroscope.labels.autointerp.examples import Window, render

LABEL_TOOL = "feature_label"
DETECT_TOOL = "detection"
MAX_LABEL_CHARS = 120
MAX_DESCRIPTION_CHARS = 600

LABEL_SYSTEM = (
    "You are a meticulous interpretability researcher. You study one feature of a sparse autoencoder trained on "
    "a language model's internal activations. You are shown text windows where the feature fires, strongest first "
    "(its strongest windows, and windows from across the range of its activations); "
    "the tokens where it fires are marked <<like this>>, and each window gives its strongest activation. Find "
    "what the marked tokens have in common (the token itself, its meaning, or its context) and name it."
)

LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "description": "A concise label of a few words."},
        "description": {"type": "string", "description": "One sentence: when does the feature fire?"},
    },
    "required": ["label", "description"],
    "additionalProperties": False,
}

DETECT_SYSTEM = (
    "You are a meticulous interpretability researcher. A feature of a language model has been given a label. "
    "You are shown numbered text windows; some contain text where the feature fires, the others do not. For each "
    "window in order, answer 1 if the label says the feature would fire somewhere in it, else 0."
)


def detect_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "matches": {"type": "array", "items": {"type": "integer", "enum": [0, 1]},
                        "description": "One 0 or 1 per window, in the order shown."},
        },
        "required": ["matches"],
        "additionalProperties": False,
    }


def label_prompt(tokenizer: Any, windows: list[Window]) -> str:
    lines = [f"{len(windows)} windows where the feature fires, strongest first:", ""]
    for i, w in enumerate(windows, 1):
        lines.append(f"Example {i} (max {w.value:.3g}): {render(tokenizer, w.tokens, np.asarray(w.acts) > 0)}")
    lines += ["", "Answer with a concise label (a few words) and a one-sentence description of when the feature "
                  "fires."]
    return "\n".join(lines)


def prompt_sha256(system: str, user: str) -> str:
    """The hash stored with a label: the exact system and user text sent."""
    return hashlib.sha256(f"{system}\n\n{user}".encode("utf-8")).hexdigest()


def check_label(data: dict[str, Any]) -> tuple[str, str]:
    """``(label, description)`` from an answer; ValueError when it does not fit the schema."""
    label, description = data.get("label"), data.get("description")
    if not isinstance(label, str) or not label.strip():
        raise ValueError("no label string")
    if not isinstance(description, str) or not description.strip():
        raise ValueError("no description string")
    label, description = " ".join(label.split()), " ".join(description.split())
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"the label is {len(label)} characters long (a few words were asked)")
    return label, description[:MAX_DESCRIPTION_CHARS]


def detect_prompt(label: str, description: str, texts: list[str]) -> str:
    head = f"Label: {label}" + (f"\nDescription: {description}" if description else "")
    lines = [head, "", f"{len(texts)} windows:", ""]
    lines += [f"{i}. {t}" for i, t in enumerate(texts, 1)]
    lines += ["", f"Answer with exactly {len(texts)} values, 1 where the feature fires and 0 where it does not."]
    return "\n".join(lines)


def check_detection(n: int):
    """A checker of a detection answer with ``n`` windows: the list of n 0/1 values."""

    def check(data: dict[str, Any]) -> list[int]:
        matches = data.get("matches")
        if not isinstance(matches, list) or len(matches) != n:
            raise ValueError(f"expected a list of {n} answers")
        out = []
        for m in matches:
            if isinstance(m, bool) or m not in (0, 1):
                raise ValueError("every answer must be 0 or 1")
            out.append(int(m))
        return out

    return check
