"""``neuroscope steer``: one steered and one unsteered greedy generation, side by side.

Loads the model and SAE the way ``serve`` does (:func:`neuroscope.runtime.load_runtime`), runs the prompt
twice through the one decode loop — once plain, once with the ``--feature`` steering — and prints both texts
and the features whose mean activation over the generated tokens changed most.
"""

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from neuroscope.config import DEFAULT_MODEL, ServeConfig
from neuroscope.core.protocol import Backend, GenerationParams, Steering


class Positions(str, Enum):
    all = "all"
    generated = "generated"


@dataclass
class Run:
    token_ids: list[int]
    text: str
    finish_reason: str | None
    mean_activation: dict[int, float] = field(default_factory=dict)  # feature -> mean over generated tokens


@dataclass
class Comparison:
    prompt_ids: list[int]
    steering: Steering
    unsteered: Run
    steered: Run

    def changes(self, n: int) -> list[tuple[int, float, float]]:
        """The ``n`` features whose mean activation over the generated tokens changed most:
        (index, unsteered mean, steered mean), largest change first (ties by index)."""
        a, b = self.unsteered.mean_activation, self.steered.mean_activation
        rows = [(i, a.get(i, 0.0), b.get(i, 0.0)) for i in set(a) | set(b)]
        rows.sort(key=lambda r: (-abs(r[2] - r[1]), r[0]))
        return rows[:n]


def chat_prompt(tokenizer: Any, text: str) -> list[int]:
    """The user message through the model's chat template (the raw text when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return list(tokenizer.encode(rendered, add_special_tokens=False))
    return list(tokenizer.encode(text))


def generate_run(backend: Backend, tokenizer: Any, prompt_ids: list[int], params: GenerationParams) -> Run:
    from neuroscope.core.decode import generate

    ids: list[int] = []
    sums: dict[int, float] = {}
    finish = None
    steps = 0
    for step in generate(backend, prompt_ids, params):
        steps += 1
        for i, v in zip(step.feature_ids.tolist(), step.feature_values.tolist()):
            sums[i] = sums.get(i, 0.0) + v
        finish = step.finish_reason
        if finish != "stop":  # the EOS token ends the turn and adds no text
            ids.append(step.token_id)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Run(ids, text, finish, {i: s / max(1, steps) for i, s in sums.items()})


def compare(backend: Backend, tokenizer: Any, prompt_ids: list[int], steering: Steering, *, max_tokens: int,
            eos_token_ids: frozenset[int] = frozenset()) -> Comparison:
    """Greedy, the same prompt and length, without and with ``steering``."""
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, eos_token_ids=eos_token_ids)
    plain = generate_run(backend, tokenizer, prompt_ids, params)
    steered = generate_run(backend, tokenizer, prompt_ids, GenerationParams(
        max_tokens=max_tokens, temperature=0.0, eos_token_ids=eos_token_ids, steering=steering))
    return Comparison(prompt_ids, steering, plain, steered)


def _describe(spec: Steering) -> str:
    parts = [f"{f.index}:{f.mode}" + ("" if f.mode == "ablate" else f":{f.value:g}") for f in spec.features]
    return ", ".join(parts) + f" ({spec.positions} positions)"


def _report_json(cmp: Comparison, labels, rt, top: int) -> dict:
    steered_by = {f.index: f for f in cmp.steering.features}
    return {
        "model": rt.info.model_id,
        "backend": rt.backend.name,
        "layer": rt.config.sae_layer,
        "prompt_tokens": len(cmp.prompt_ids),
        "steering": cmp.steering.to_json(),
        **{name: {"text": run.text, "token_ids": run.token_ids, "finish_reason": run.finish_reason}
           for name, run in (("unsteered", cmp.unsteered), ("steered", cmp.steered))},
        "features": [
            {"index": i, "label": labels[i], "unsteered": round(a, 6), "steered": round(b, 6),
             "change": round(b - a, 6), "steered_by": steered_by[i].mode if i in steered_by else None}
            for i, a, b in cmp.changes(top)
        ],
    }


def _print(console: Console, cmp: Comparison, labels, rt, top: int) -> None:
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", justify="right")
    head.add_column()
    head.add_row("model", escape(f"{rt.info.model_id} on {rt.backend.name} ({rt.info.device})")
                 + ("  [yellow](built-in demo: random weights)[/]" if rt.demo else ""))
    head.add_row("layer", f"output of block {rt.config.sae_layer}; {len(cmp.prompt_ids)} prompt tokens, greedy")
    head.add_row("steering", Text(_describe(cmp.steering)))
    console.print(head)

    texts = Table(show_lines=True, expand=True)
    texts.add_column(f"unsteered ({len(cmp.unsteered.token_ids)} tokens, {cmp.unsteered.finish_reason})", ratio=1)
    texts.add_column(f"steered ({len(cmp.steered.token_ids)} tokens, {cmp.steered.finish_reason})", ratio=1)
    texts.add_row(Text(cmp.unsteered.text), Text(cmp.steered.text))
    console.print(texts)

    steered_by = {f.index: f for f in cmp.steering.features}
    table = Table(title="Features that changed most (mean activation over the generated tokens, as reported in "
                        "each token's top-k)")
    for c in ("feature", "label", "unsteered", "steered", "change", "steered by"):
        table.add_column(c, justify="right" if c in ("feature", "unsteered", "steered", "change") else "left")
    for i, a, b in cmp.changes(top):
        f = steered_by.get(i)
        how = "" if f is None else (f.mode if f.mode == "ablate" else f"{f.mode} {f.value:g}")
        style = "green" if b > a else "red"
        table.add_row(str(i), Text(labels[i]), f"{a:.3f}", f"{b:.3f}", f"[{style}]{b - a:+.3f}[/]", how)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``steer`` to the ``neuroscope`` app. Its option types are ``serve``'s, imported here (not at the top:
    ``neuroscope.cli.serve`` imports this module); the annotations are evaluated as the function is defined, which
    is why this module does not use postponed annotations."""
    from neuroscope.cli.options import (DType, Model, Norm, ReadableCommand, Sae, SAEDType, SaeLocal, SaePath, err, fail,
                                        load_or_fail, sae_fields)

    @app.command("steer", cls=ReadableCommand)
    def steer_cmd(
        ctx: typer.Context,
        prompt: Annotated[str, typer.Argument(help="The user message (the model's chat template is applied).")],
        feature: Annotated[
            list[str],
            typer.Option("--feature", "-f", help="INDEX:MODE[:VALUE] with MODE add, clamp or ablate (no value), "
                                                 "e.g. 4521:add:8 or 7:ablate; repeatable, up to 64."),
        ],
        positions: Annotated[
            Positions, typer.Option(help="all: prompt and generated positions; generated: decode steps only.")
        ] = Positions.all,
        max_tokens: Annotated[int, typer.Option(help="Tokens per generation.", min=1)] = 48,
        top: Annotated[int, typer.Option(help="Rows in the table of features that changed most.", min=1)] = 10,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
        model: Model = DEFAULT_MODEL,
        sae: Sae = None,
        sae_path: SaePath = None,
        sae_local_path: SaeLocal = None,
        sae_layer: Annotated[Optional[int], typer.Option(help="Steer and read the output of this decoder block "
                                                                "(default: as for serve).", min=0)] = None,
        top_k: Annotated[int, typer.Option(help="Features reported per token.", min=1, max=1000)] = 32,
        backend: Annotated[str, typer.Option(help="auto, mlx, torch-cuda or torch-cpu.")] = "auto",
        dtype: Annotated[Optional[DType], typer.Option(help="Model dtype (as for serve).")] = None,
        sae_input_norm: Annotated[Norm, typer.Option(help="none (Gemma Scope) or rms.")] = Norm.none,
        sae_dtype: Annotated[SAEDType, typer.Option(help="SAE weights in memory (encoder and decoder).")] = SAEDType.float32,
        labels_path: Annotated[Optional[Path], typer.Option(help="JSON file of feature index -> label.")] = None,
        demo: Annotated[bool, typer.Option("--demo", help="Use the built-in offline demo model (random weights).")] = False,
    ) -> None:
        """Generate greedily with and without feature steering and show both, side by side."""
        from neuroscope.core.steering import SteeringError, parse_feature_option, steering_from_options

        defaults = all(
            getattr(ctx.get_parameter_source(p), "name", "DEFAULT") == "DEFAULT"
            for p in ("model", "sae", "sae_path", "sae_local_path")
        )
        config = ServeConfig(
            **sae_fields(ctx, model, sae, sae_path, sae_local_path, sae_layer), top_k=top_k, backend=backend, dtype=dtype.value if dtype else None,
            sae_input_norm=sae_input_norm.value, sae_dtype=sae_dtype.value,
            labels_path=str(labels_path) if labels_path else None, demo=demo, max_tokens=max_tokens,
            port=0, features_port=0, demo_fallback=defaults and not demo,
        )
        try:
            config.validate()
            features = [parse_feature_option(f) for f in feature]
        except (ValueError, SteeringError) as exc:
            fail(str(exc), 2)
        rt = load_or_fail(config)
        try:
            try:
                spec = steering_from_options(features, positions.value, rt.sae.d_sae)
            except SteeringError as exc:
                fail(str(exc), 2)
            if rt.fallback_reason:
                err.print(f"[yellow]using the built-in demo model: {escape(rt.fallback_reason)}[/]", highlight=False)
            prompt_ids = chat_prompt(rt.info.tokenizer, prompt)
            room = rt.info.context_length - len(prompt_ids)
            if room < max_tokens:
                fail(f"the prompt takes {len(prompt_ids)} of the model's {rt.info.context_length} positions: "
                      f"--max-tokens must be at most {max(room, 0)}", 2)
            cmp = compare(rt.backend, rt.info.tokenizer, prompt_ids, spec, max_tokens=max_tokens,
                          eos_token_ids=frozenset(rt.info.eos_token_ids))
        finally:
            rt.backend.close()
        if json_out:
            typer.echo(json.dumps(_report_json(cmp, rt.labels, rt, top), ensure_ascii=False))
        else:
            _print(Console(), cmp, rt.labels, rt, top)

