"""What several commands take alike: readable help, the choice enums and the model / SAE options of ``serve``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer import rich_utils
from typer.core import TyperArgument, TyperCommand, TyperGroup

from neuroscope.config import DEFAULT_LABELER


def _folding(parameter_help):
    """typer renders an option's help, default and envvar as rich Text whose overflow falls back to the table's
    ``ellipsis``: a default longer than the help column (``layer_20/width_16k/average_l0_71/params.npz`` at 80
    columns) was cut to ``params…``. Folded instead, every default is shown in full, wrapped if need be."""

    def parameter_help_folded(*args, **kwargs):
        columns = parameter_help(*args, **kwargs)
        for item in getattr(columns, "renderables", ()):
            if isinstance(item, Text) and item.overflow is None:
                item.overflow = "fold"
        return columns

    parameter_help_folded.folds = True
    return parameter_help_folded


if not getattr(rich_utils._get_parameter_help, "folds", False):
    rich_utils._get_parameter_help = _folding(rich_utils._get_parameter_help)


def _usage_name(param: TyperArgument):
    """An argument on the usage line as usage lines write them: ``PROMPT`` (required), ``[MODEL]`` (optional)."""

    def name() -> str:
        text = (param.name or "").upper()
        text = text if param.required else f"[{text}]"
        return text + ("..." if param.nargs != 1 else "")

    return name


class _Readable:
    """Help with plain metavars (TEXT, INTEGER, PATH, a|b) instead of typer's type tags (``<str>``, ``<bool>``,
    ``<int range>``); a flag shows none. Shorter metavars leave the help column room for long defaults."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):  # its name column already says what it is
                param.display_type_rich = lambda ctx: None
                param._usage_display_name = _usage_name(param)  # PROMPT, [MODEL]: not {prompt}, [model]
                continue
            if getattr(param, "metavar", "") is not None or not hasattr(param, "type_descriptor"):
                continue
            d = param.type_descriptor
            if getattr(param, "is_flag", False):
                param.metavar = ""
            elif d.is_choice:
                param.metavar = "CHOICE"  # the help text names the choices
            elif d.is_path:
                param.metavar = "PATH"
            else:
                param.metavar = {int: "INTEGER", float: "NUMBER", bool: ""}.get(d.annotation, "TEXT")
            # no "[1<=x<=1000]" column: out-of-range values are refused with the range in the message
            param._get_number_range_help_str = lambda: None

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class ReadableCommand(_Readable, TyperCommand):
    pass


class ReadableGroup(_Readable, TyperGroup):
    """A command group (``neuroscope``, ``neuroscope calibrate``…) whose own options read as a command's do."""


err = Console(stderr=True)


LAYER_HELP = ("Capture the output of this decoder block (default: the layer the SAE's config names; for a "
              "params.npz, layer_N/ in its hub path, else 20).")


def fail(message: str, code: int = 1) -> NoReturn:
    """One ``error:`` line on stderr and exit ``code`` (2: bad usage). The message is printed as written: a Text,
    so brackets (``'.[torch]'``) and colons (a steering spec such as ``12:clamp:0``) are neither markup nor emoji."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


def load_or_fail(config):
    """The backend, model and SAE loaded as ``serve`` loads them, a spinner on stderr meanwhile; a failure is one
    ``error:`` line and exit 1. The caller closes ``runtime.backend``."""
    from neuroscope.runtime import StartupError, load_runtime

    try:
        with err.status("loading") as status:
            return load_runtime(config, lambda msg: status.update(msg))
    except StartupError as exc:
        fail(str(exc))


MODEL_OPTIONS = ("model", "sae", "sae_path", "sae_local_path")


def uses_defaults(ctx: typer.Context) -> bool:
    """Whether the command runs on the default model and SAE (none of the model / SAE options given)."""
    return not any(getattr(ctx.get_parameter_source(p), "name", "DEFAULT") != "DEFAULT" for p in MODEL_OPTIONS
                   if p in ctx.params)


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (on the command line or by its environment variable)."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"  # typer may carry its own click


def sae_fields(ctx: typer.Context, model: str, sae: str | None, sae_path: str | None, sae_local_path: Path | None,
               sae_layer: int | None) -> dict:
    """The model / SAE fields of a command's ``ServeConfig``, the SAE chosen as ``choose_sae`` does (the model's
    default from the registry when none is named); an SAE that cannot be chosen is one line and exit 2."""
    from neuroscope.config import SaeChoiceError, choose_sae

    local = str(sae_local_path) if sae_local_path else None
    try:
        choice = choose_sae(model, sae, sae_path, local, sae_layer if given(ctx, "sae_layer") else None)
    except SaeChoiceError as exc:
        fail(str(exc), 2)
    return {"model": model, "sae": choice.sae, "sae_path": choice.sae_path, "sae_local_path": local,
            "sae_layer": sae_layer if choice.sae_layer is None else choice.sae_layer, "sae_default": choice.default}


def _default_model_here() -> bool:
    from neuroscope.config import DEFAULT_MODEL
    from neuroscope.core.checkpoint import local_dir
    from neuroscope.core.protocol import ModelSpec

    try:
        return (local_dir(ModelSpec(DEFAULT_MODEL, offline=True)) / "config.json").is_file()
    except Exception:  # noqa: BLE001 - not in the hub cache, in whatever way huggingface_hub says it
        return False


def demo_hint(ctx: typer.Context, demo: bool, *, always: bool = False) -> str:
    """What every command on the default model says when that model (or its data) is not here: the built-in
    demo is one flag away. ``always``: say it even when the default model is on this machine."""
    if demo or not uses_defaults(ctx) or (not always and _default_model_here()):
        return ""
    return " (for the built-in offline demo model, add --demo)"


def group(help: str, **kwargs) -> typer.Typer:
    """A command group as every one of ours is: readable help, help when called bare, no completion installer, and
    errors as one line rather than typer's pretty tracebacks."""
    return typer.Typer(cls=ReadableGroup, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, **kwargs)


class Norm(str, Enum):
    none = "none"
    rms = "rms"


class SAEDType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


Model = Annotated[str, typer.Option(help="Hub id or local directory of a Gemma 2 or Gemma 3 model.")]
Sae = Annotated[
    Optional[str], typer.Option(show_default=False, help="Hub repo of the SAE (default: the model's default SAE, "
                                                         "from the registry; `neuroscope sae list`).")
]
SaePath = Annotated[
    Optional[str], typer.Option(show_default=False, help="The SAE's file or directory inside --sae (default: the "
                                                         "model's default SAE).")
]
SaeLocal = Annotated[
    Optional[Path], typer.Option(help="A local params.npz (or a directory holding one) instead of the hub.")
]
Labeler = Annotated[
    Optional[str], typer.Option(envvar="LABELER_MODEL", show_default=False,
                                help=f"Whose auto-interp labels to use (default: {DEFAULT_LABELER}).")
]
LabelThreshold = Annotated[
    float, typer.Option(help="Labels scored below this (detection balanced accuracy, 0..1) are marked "
                             "low-confidence.", min=0.0, max=1.0)
]
