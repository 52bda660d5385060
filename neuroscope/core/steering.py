"""Reading a steering spec from a request body or from the command line, with errors that name the field.

The spec itself (:class:`neuroscope.core.protocol.Steering`) and its limits live at the backend boundary; this
module turns user input into one, or says exactly what is wrong: the chat API answers a 400 naming the
parameter (``steering.features[2].value``), the CLI exits 2 with the same message.
"""

from __future__ import annotations

import math
from typing import Any

from neuroscope.core.protocol import (
    MAX_STEER_FEATURES,
    MAX_STEER_VALUE,
    STEER_MODES,
    STEER_POSITIONS,
    SteerFeature,
    Steering,
)

_FEATURE_KEYS = ("index", "mode", "value")
_STEERING_KEYS = ("features", "positions")


class SteeringError(ValueError):
    """A steering spec that cannot be run; ``param`` names the offending field, ``code`` OpenAI-style."""

    def __init__(self, message: str, param: str, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_index(index: int, d_sae: int, param: str) -> None:
    if index < 0:
        raise SteeringError(f"'{param}' must be >= 0, got {index}", param)
    if index >= d_sae:
        raise SteeringError(
            f"'{param}' is {index}, out of range: the SAE has {d_sae} features (0..{d_sae - 1})", param
        )


def check_value(value: float | int, param: str) -> None:
    """A finite number within the limit; an integer is compared as it is (one too large for a float is refused
    here, not by an overflow later)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SteeringError(f"'{param}' must be a finite number, got {value}", param)
    if abs(value) > MAX_STEER_VALUE:
        shown = f"{value:g}" if isinstance(value, float) else (str(value) if len(str(abs(value))) <= 20 else
                                                                  f"an integer of {len(str(abs(value)))} digits")
        raise SteeringError(f"'{param}' must be between -{MAX_STEER_VALUE:g} and {MAX_STEER_VALUE:g}, got {shown}",
                            param)


def parse_feature(obj: Any, d_sae: int, param: str) -> SteerFeature:
    """One ``{"index", "mode", "value"}`` object (``ablate`` takes no value)."""
    if not isinstance(obj, dict):
        raise SteeringError(f"'{param}' must be an object with 'index', 'mode' and 'value'", param, "invalid_type")
    for key in obj:
        if key not in _FEATURE_KEYS:
            raise SteeringError(
                f"unknown field '{param}.{key}' (a steered feature has {', '.join(_FEATURE_KEYS)})",
                f"{param}.{key}", "unknown_parameter",
            )
    index = obj.get("index")
    if index is None:
        raise SteeringError(f"'{param}.index' is required", f"{param}.index", "missing_required_parameter")
    if not _is_int(index):
        raise SteeringError(f"'{param}.index' must be an integer", f"{param}.index", "invalid_type")
    check_index(index, d_sae, f"{param}.index")
    mode = obj.get("mode")
    if mode is None:
        raise SteeringError(f"'{param}.mode' is required", f"{param}.mode", "missing_required_parameter")
    if mode not in STEER_MODES:
        raise SteeringError(
            f"unknown steering mode {mode!r} in '{param}.mode'; use one of {', '.join(STEER_MODES)}", f"{param}.mode"
        )
    value = obj.get("value")
    if mode == "ablate":
        if value is not None:
            raise SteeringError(
                f"'{param}.value' must be left out: ablate clamps the feature to 0 and takes no value", f"{param}.value"
            )
        return SteerFeature(index, "ablate", 0.0)
    if value is None:
        raise SteeringError(f"'{param}.value' is required for {mode}", f"{param}.value", "missing_required_parameter")
    if not _is_number(value):
        raise SteeringError(f"'{param}.value' must be a number", f"{param}.value", "invalid_type")
    check_value(value, f"{param}.value")
    return SteerFeature(index, mode, float(value))


def parse_steering(obj: Any, d_sae: int, param: str = "steering") -> Steering | None:
    """The ``steering`` field of a request body: ``None`` (absent, null, or no features) or a valid spec."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise SteeringError(f"'{param}' must be an object with 'features' and 'positions'", param, "invalid_type")
    for key in obj:
        if key not in _STEERING_KEYS:
            raise SteeringError(
                f"unknown field '{param}.{key}' (steering has {', '.join(_STEERING_KEYS)})",
                f"{param}.{key}", "unknown_parameter",
            )
    positions = obj.get("positions", "all")
    if positions not in STEER_POSITIONS:
        raise SteeringError(
            f"'{param}.positions' must be one of {', '.join(repr(p) for p in STEER_POSITIONS)}, got {positions!r}",
            f"{param}.positions",
        )
    features = obj.get("features")
    if features is None:
        raise SteeringError(f"'{param}.features' is required", f"{param}.features", "missing_required_parameter")
    if not isinstance(features, list):
        raise SteeringError(f"'{param}.features' must be an array", f"{param}.features", "invalid_type")
    if len(features) > MAX_STEER_FEATURES:
        raise SteeringError(
            f"'{param}.features' may hold at most {MAX_STEER_FEATURES} features, got {len(features)}",
            f"{param}.features",
        )
    parsed: list[SteerFeature] = []
    first: dict[int, int] = {}
    for j, item in enumerate(features):
        where = f"{param}.features[{j}]"
        f = parse_feature(item, d_sae, where)
        if f.index in first:
            raise SteeringError(
                f"'{where}.index' repeats feature {f.index}, already steered by '{param}.features[{first[f.index]}]'; "
                "give each feature once", f"{where}.index",
            )
        first[f.index] = j
        parsed.append(f)
    if not parsed:
        return None
    spec = Steering(tuple(parsed), positions)
    spec.check(d_sae)  # the backend's own check agrees
    return spec


def parse_feature_option(text: str) -> SteerFeature:
    """``INDEX:MODE[:VALUE]`` from the command line: ``4521:add:8``, ``12:clamp:0``, ``7:ablate``. The
    index's range is checked once the SAE is loaded (:func:`check_index`)."""
    parts = text.split(":")
    usage = f"--feature {text!r}: expected INDEX:MODE[:VALUE], e.g. 4521:add:8, 12:clamp:0 or 7:ablate"
    if len(parts) not in (2, 3):
        raise SteeringError(usage, "--feature")
    raw_index, mode = parts[0].strip(), parts[1].strip()
    try:
        index = int(raw_index)
    except ValueError:
        raise SteeringError(f"{usage} (the index {raw_index!r} is not an integer)", "--feature") from None
    if index < 0:
        raise SteeringError(f"--feature {text!r}: the index must be >= 0", "--feature")
    if mode not in STEER_MODES:
        raise SteeringError(f"--feature {text!r}: unknown mode {mode!r}; use one of {', '.join(STEER_MODES)}", "--feature")
    if mode == "ablate":
        if len(parts) == 3:
            raise SteeringError(f"--feature {text!r}: ablate takes no value (it clamps to 0)", "--feature")
        return SteerFeature(index, "ablate", 0.0)
    if len(parts) != 3:
        raise SteeringError(f"--feature {text!r}: {mode} needs a value, e.g. {index}:{mode}:8", "--feature")
    try:
        value = float(parts[2])
    except ValueError:
        raise SteeringError(f"--feature {text!r}: the value {parts[2]!r} is not a number", "--feature") from None
    try:
        check_value(value, "value")
    except SteeringError as exc:
        raise SteeringError(f"--feature {text!r}: {exc.message}", "--feature") from None
    return SteerFeature(index, mode, value)  # type: ignore[arg-type]


def _spec(f: SteerFeature) -> str:
    """A feature as ``--feature`` takes it: ``999:add:4``, ``5:ablate``."""
    return f"{f.index}:ablate" if f.mode == "ablate" else f"{f.index}:{f.mode}:{f.value:g}"


def steering_from_options(features: list[SteerFeature], positions: str, d_sae: int) -> Steering:
    """The CLI's ``--feature`` list and ``--positions`` once the SAE (hence ``d_sae``) is known."""
    if not features:
        raise SteeringError("give at least one --feature INDEX:MODE[:VALUE]", "--feature")
    if len(features) > MAX_STEER_FEATURES:
        raise SteeringError(f"at most {MAX_STEER_FEATURES} --feature options, got {len(features)}", "--feature")
    if positions not in STEER_POSITIONS:
        raise SteeringError(f"--positions must be one of {', '.join(STEER_POSITIONS)}, got {positions!r}", "--positions")
    seen: set[int] = set()
    for f in features:
        if not 0 <= f.index < d_sae:
            raise SteeringError(
                f"--feature {_spec(f)}: index {f.index} is out of range: the SAE has {d_sae} features "
                f"(0..{d_sae - 1})",
                "--feature",
            )
        if f.index in seen:
            raise SteeringError(f"feature {f.index} is given twice with --feature", "--feature")
        seen.add(f.index)
    return Steering(tuple(features), positions)  # type: ignore[arg-type]
