"""``neuroscope features search | show | inspect``: the feature explorer in the terminal.

``search`` and ``show`` load no model: the label chain, the calibration and the examples come from the cache,
and ``show``'s neighbours and logit effects from the SAE's decoder and, of the checkpoint, only its unembedding
and final-norm tensors (:mod:`neuroscope.explore.weights`). ``inspect`` loads the model as ``serve`` does and
runs the prompt path once (a prefill, no generation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from neuroscope.cli.calibrate import Demo, InputNorm, Layer, _config
from neuroscope.cli.labels import _d_sae, _namespace
from neuroscope.cli.options import (Labeler, Model, Norm, ReadableCommand, Sae, SaeLocal, SaePath, fail, group,
                                    load_or_fail, sae_fields)
from neuroscope.config import DEFAULT_MODEL, ServeConfig

app = group(help="Explore features: search the labels, show a feature's page, inspect which features fire on a text.")

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object (the HTTP API's shape) instead of tables.")]
LabelsPath = Annotated[Optional[Path], typer.Option(help="JSON file of feature index -> label (the first source).")]


def _setup(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, labeler, labels_path):
    """The config (the demo's own model and SAE under --demo), its cache namespace, the SAE's width and the label
    chain as ``serve`` builds it."""
    from neuroscope.core import fixtures
    from neuroscope.labels.sources import build_chain
    from neuroscope.labels.table import LabelError

    config = _config(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, labeler=labeler,
                     labels_path=str(labels_path) if labels_path else None)
    fx = fixtures.demo_fixture() if demo else None
    if fx is not None:
        config.model, config.sae_local_path, config.sae_layer = str(fx.model_dir), str(fx.sae_path), fx.sae_layer
    ns = _namespace(config)
    d_sae, _ = _d_sae(config, ns)
    try:
        chain = build_chain(ns, d_sae, labels_path=config.labels_path, labeler=config.labeler,
                            demo_labels_path=fx.labels_path if fx else None, threshold=config.label_threshold,
                            neuronpedia=not demo)
    except LabelError as exc:
        fail(str(exc))
    return config, ns, chain


@app.command("search", cls=ReadableCommand)
def search_cmd(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="Words of a label (the last one may be cut short), or a feature "
                                              "number such as 4521 or #4521.")],
    limit: Annotated[int, typer.Option(help="Results to show (1-100).")] = 20,
    json_out: Json = False,
    model: Model = DEFAULT_MODEL, sae: Sae = None, sae_path: SaePath = None,
    sae_local_path: SaeLocal = None, sae_layer: Layer = None, sae_input_norm: InputNorm = Norm.none,
    demo: Demo = False, labeler: Labeler = None, labels_path: LabelsPath = None,
) -> None:
    """Features whose labels match the words best (BM25), a feature number first (no model loaded)."""
    from neuroscope.explore.search import FeatureSearch, SearchError, check

    try:
        check(query, limit)
    except SearchError as exc:
        fail(str(exc) if exc.param == "q" else f"--{exc}", 2)
    _, _, chain = _setup(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, labeler,
                         labels_path)
    hits = FeatureSearch(chain).search(query, limit)
    if json_out:
        typer.echo(json.dumps({"query": query, "results": [h.to_json() for h in hits]}, ensure_ascii=False))
        return
    if not hits:
        Console().print(f"no feature's label matches {escape(query)!r}", highlight=False)
        return
    table = Table(title=f"{len(hits)} feature{'s' if len(hits) != 1 else ''} for {query!r}", title_justify="left")
    for col in ("rank", "feature", "label", "source", "score"):
        table.add_column(col, justify="right" if col in ("rank", "feature", "score") else "left",
                         overflow="fold", no_wrap=col != "label")
    for h in hits:
        table.add_row(str(h.rank), str(h.index), Text(h.label), h.source, "" if h.score is None else f"{h.score:.2f}")
    Console().print(table)


@app.command("show", cls=ReadableCommand)
def show_cmd(
    ctx: typer.Context,
    index: Annotated[str, typer.Argument(help="The feature: 4521 or #4521.")],
    json_out: Json = False,
    model: Model = DEFAULT_MODEL, sae: Sae = None, sae_path: SaePath = None,
    sae_local_path: SaeLocal = None, sae_layer: Layer = None, sae_input_norm: InputNorm = Norm.none,
    demo: Demo = False, labeler: Labeler = None, labels_path: LabelsPath = None,
) -> None:
    """One feature's page: label, statistics, examples, decoder neighbours, logit effects (no model loaded: of the
    checkpoint only the tokenizer, the unembedding and the final norm are read)."""
    from neuroscope.core import checkpoint, sae_formats
    from neuroscope.core.protocol import BackendError, ModelSpec
    from neuroscope.core.sae import SAEError
    from neuroscope.explore import weights
    from neuroscope.explore.page import Explorer, PageError

    config, ns, chain = _setup(ctx, model, sae, sae_path, sae_local_path, sae_layer, sae_input_norm, demo, labeler,
                               labels_path)
    try:
        model_dir = checkpoint.local_dir(ModelSpec(config.model, offline=True))
        tokenizer = checkpoint.load_tokenizer(model_dir)
    except (OSError, ValueError, BackendError) as exc:
        fail(f"the checkpoint of {config.model} is not on this machine ({exc}); `neuroscope models pull` it first")
    explorer = Explorer.for_namespace(chain, tokenizer, ns)
    try:
        i = explorer.index(index)
    except PageError as exc:
        fail(str(exc), 2)
    try:
        loc = sae_formats.locate(None if config.sae_local_path else config.sae, config.sae_path,
                                 config.sae_local_path)
        W_dec = sae_formats.load(loc).W_dec
        eff = weights.effects(model_dir, W_dec, i)
    except (SAEError, weights.WeightsError, KeyError, OSError, ValueError) as exc:
        fail(f"cannot compute the neighbours and logits: {exc}")
    page = explorer.page(i, eff)
    if json_out:
        typer.echo(json.dumps(page, ensure_ascii=False))
        return
    _print_page(Console(), page)


def _print_page(out: Console, page: dict[str, Any]) -> None:
    score = "" if page["score"] is None else f", score {page['score']:.2f}"
    out.print(Text.assemble((f"feature {page['index']}  ", "bold cyan"), (page["label"], "bold"),
                            f"  ({page['source']}{score})"))
    if page["description"]:
        out.print(Text(page["description"]))
    st = page["stats"]
    out.print("no calibration (no statistics)" if st is None else
              f"fires on {100 * st['firing_rate']:.3g} % of tokens; when it fires mean {st['mean']:.3g}, "
              f"std {st['std']:.3g}, max {st['max']:.3g}", highlight=False)
    for key, title in (("examples", "top activating windows"),
                       ("quantile_examples", "windows across the activation range (quantile, max)")):
        if not page[key]:
            continue
        ex = Table(title=title, title_justify="left", show_header=False)
        ex.add_column("max", justify="right")
        ex.add_column("window", overflow="fold")
        for e in page[key][:8]:
            peak = e["max"] or 1.0
            text = Text()
            for tok, act in zip(e["tokens"], e["activations"]):
                text.append(tok, style=f"bold on rgb({255},{int(255 - 180 * min(act / peak, 1))},{90})"
                            if act > 0 else None)
            ex.add_row((f"q{e['quantile']} " if "quantile" in e else "") + f"{e['max']:.3g}", text)
        out.print(ex)
    if not page["examples"]:
        out.print("no examples run (`neuroscope labels generate` makes one)")
    nb = Table(title="decoder neighbours (cosine)", title_justify="left")
    for col in ("feature", "label", "cosine"):
        nb.add_column(col, justify="left" if col == "label" else "right", overflow="fold")
    for n in page["neighbours"]:
        nb.add_row(str(n["index"]), Text(n["label"]), f"{n['cosine']:.3f}")
    out.print(nb)
    lg = Table(title="logit effects (unembedding of the decoder direction, final norm folded in)", title_justify="left")
    for col in ("positive", "", "negative", " "):
        lg.add_column(col, justify="right" if col.strip() == "" else "left", overflow="fold")
    for p, q in zip(page["logits"]["positive"], page["logits"]["negative"]):
        lg.add_row(Text(repr(p["token"])), f"{p['value']:+.3f}", Text(repr(q["token"])), f"{q['value']:+.3f}")
    out.print(lg)


@app.command("inspect", cls=ReadableCommand)
def inspect_cmd(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The text, tokenized as /v1/completions does (BOS added).")],
    top_k: Annotated[int, typer.Option(help="Features per token.", min=1, max=1000)] = 8,
    summary: Annotated[int, typer.Option(help="Rows of the summary (features by their largest activation).",
                                         min=1, max=20)] = 20,
    json_out: Json = False,
    model: Model = DEFAULT_MODEL, sae: Sae = None, sae_path: SaePath = None,
    sae_local_path: SaeLocal = None, sae_layer: Layer = None, sae_input_norm: InputNorm = Norm.none,
    backend: Annotated[str, typer.Option(help="auto, mlx, torch-cuda or torch-cpu.")] = "auto",
    demo: Demo = False, labeler: Labeler = None, labels_path: LabelsPath = None,
) -> None:
    """Which features fire on a text: its top features, and each token's top-k (loads the model; no generation)."""
    from neuroscope.explore import inspect

    if not text:
        fail("the text is empty", 2)
    defaults = all(getattr(ctx.get_parameter_source(p), "name", "DEFAULT") == "DEFAULT"
                   for p in ("model", "sae", "sae_path", "sae_local_path"))
    config = ServeConfig(**sae_fields(ctx, model, sae, sae_path, sae_local_path, sae_layer),
                         sae_input_norm=sae_input_norm.value, top_k=top_k, backend=backend, demo=demo,
                         labeler=labeler, labels_path=str(labels_path) if labels_path else None, port=0,
                         features_port=0, demo_fallback=defaults and not demo, neuronpedia=False)
    try:
        config.validate()
    except ValueError as exc:
        fail(str(exc), 2)
    rt = load_or_fail(config)
    try:
        tok = rt.info.tokenizer
        ids = list(tok.encode(text, add_special_tokens=True))
        bos = getattr(tok, "bos_token_id", None)
        if bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        if len(ids) > rt.info.context_length:
            fail(f"the text takes {len(ids)} tokens; the model's context is {rt.info.context_length}", 2)
        specials = frozenset(getattr(tok, "all_special_ids", ()) or ()) | frozenset(rt.info.eos_token_ids)
        result = inspect.run(rt.backend, tok, rt.labels, ids, top_k, feature_filter=rt.feature_filter,
                             special_ids=specials)
    finally:
        rt.backend.close()
    result["summary"] = result["summary"][:summary]
    if json_out:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    out = Console()
    table = Table(title=f"top features of {len(ids)} tokens (BOS excluded)", title_justify="left")
    for col in ("feature", "label", "max", "sum", "tokens"):
        table.add_column(col, justify="left" if col == "label" else "right", overflow="fold")
    for f in result["summary"]:
        table.add_row(str(f["index"]), Text(f["label"]), f"{f['max']:.3f}", f"{f['sum']:.3f}", str(f["count"]))
    out.print(table)
    per = Table(title=f"each token's top {top_k}", title_justify="left")
    for col in ("pos", "token", "L0", "features"):
        per.add_column(col, justify="right" if col in ("pos", "L0") else "left", overflow="fold")
    for t in result["tokens"]:
        feats = ", ".join(f"{f['index']} {f['label']} ({f['activation']:.2f})" for f in t["top_features"])
        per.add_row(str(t["position"]), Text(repr(t["token"])), str(t["l0"]), Text(feats))
    out.print(per)
