// The side panels: a token's top-k features (#feature-panel), the selected feature, the most active features.

import { visible } from "./conversation.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2)); // sums
const act = (x) => x.toFixed(2); // activations, as the stream gives them (to 2 places)

// Where each feature's label comes from ({index: {label, source, score?, low_confidence?}}), when known.
let labelDetail = {};

export function setLabelDetail(detail) {
  labelDetail = detail || {};
}

// "source neuronpedia, score 0.75" (and "low confidence" under the server's --label-threshold), or "".
function provenance(index) {
  const d = labelDetail[String(index)];
  if (!d) return "";
  let text = `source ${d.source}`;
  if (typeof d.score === "number") text += `, score ${d.score.toFixed(2)}`;
  if (d.low_confidence) text += " (low confidence)";
  return text;
}

// One clickable feature row: #index, label, a bar (value / scale), the value (and its surprise under a filter).
function featureRow(index, label, value, scale, note, selected, surprise) {
  const li = el("li");
  const row = el("button", "feat");
  row.type = "button";
  row.dataset.featureIndex = String(index);
  if (selected) row.classList.add("selected");
  const bar = el("span", "bar");
  const fill = el("i");
  fill.style.width = `${scale > 0 ? Math.max(2, (100 * value) / scale) : 0}%`;
  bar.append(fill);
  row.append(el("span", "fid", `#${index}`), el("span", "flabel", label), bar, el("span", "fval", note || act(value)));
  const prov = provenance(index);
  row.title = `${label} (feature ${index}): ${value}` + (prov ? ` · ${prov}` : "");
  if (typeof surprise === "number") {
    row.classList.add("with-surprise");
    row.append(el("span", "fsurprise", surprise.toFixed(2)));
    row.title += `, surprise ${surprise}`;
  }
  li.append(row);
  return li;
}

function describe(tok) {
  const kind = tok.prompt ? "prompt token" : "token";
  const parts = [`${kind} ${tok.index}`];
  if (tok.position !== undefined) parts.push(`position ${tok.position}`);
  if (tok.l0 !== undefined) parts.push(`L0 ${tok.l0}`);
  if (tok.steered) parts.push("steered");
  if (tok.filtered !== undefined) parts.push(`${tok.filtered} filtered`); // fired but hidden by the filter
  return parts.join(" · ");
}

export function renderToken(container, tok, { pinned, selected }) {
  const head = el("div", "token-head");
  let text = visible(JSON.stringify(tok.text));
  if (!tok.text) {
    if (!tok.special) text = '"" (no text of its own: part of a character)';
    else text = tok.eos || !tok.name ? `end of sequence${tok.name ? ` (${tok.name})` : ""}` : `special token ${tok.name}`;
  }
  head.append(el("span", "token-text", text), el("span", "muted", describe(tok) + (pinned ? " · pinned" : "")));
  const list = el("ol", "feature-list");
  const scale = tok.top || 0;
  for (const f of tok.features) {
    list.append(featureRow(f.index, f.label, f.activation, scale, null, f.index === selected, f.surprise));
  }
  container.replaceChildren(head, tok.features.length ? list : el("p", "muted", "No feature fired."));
}

export function renderFeature(panel, conv, info) {
  const f = conv.selected;
  panel.hidden = f === null;
  if (f === null) return panel.replaceChildren();
  const stats = conv.stats.get(f);
  const h2 = el("h2", "", `Feature #${f} `);
  const clear = el("button", "link", "clear");
  clear.type = "button";
  clear.id = "feature-clear";
  const steer = el("button", "link", "steer");
  steer.type = "button";
  steer.id = "feature-steer";
  steer.title = `steer feature ${f} in the next request`;
  h2.append(steer, clear);
  const facts = el("dl", "facts");
  const fact = (k, v) => facts.append(el("dt", "", k), el("dd", "", v));
  const d = labelDetail[String(f)];
  fact("label source", d ? d.source : info && info.labels ? info.labels.source : "");
  if (d && typeof d.score === "number") {
    fact("label score", d.score.toFixed(2) + (d.low_confidence ? " (low confidence)" : ""));
  }
  fact("in replies", stats
    ? `in the top-k of ${stats.count} of ${conv.generated} tokens; `
      + `max ${act(stats.max)}, mean ${act(stats.sum / stats.count)}`
    : `in the top-k of none of ${conv.generated} tokens`);
  const strongest = conv.tokensOf(f).slice(0, 8);
  const list = el("ol", "token-list");
  for (const tok of strongest) {
    const b = el("button", "tokref");
    b.type = "button";
    b.dataset.requestId = tok.requestId;
    b.dataset.ref = String(tok.index);
    if (tok.prompt) b.dataset.prompt = "true";
    b.append(el("span", "", visible(JSON.stringify(tok.text))), el("span", "fval", act(tok.acts.get(f))));
    const li = el("li");
    li.append(b);
    list.append(li);
  }
  const label = d && d.source !== "numeric" ? d.label : conv.label(f); // a label that arrived since is newer
  const about = d && d.description && d.label === label ? [el("p", "fdescription", d.description)] : [];
  panel.replaceChildren(h2, el("p", "flabel-big", label), ...about, facts, el("h3", "", "Strongest tokens"), list);
}

export function renderTop(list, empty, conv, n = 12) {
  const top = conv.topFeatures(n);
  const scale = top.length ? top[0].sum : 0;
  list.replaceChildren(
    ...top.map((s) => featureRow(s.index, s.label, s.sum, scale, `${fmt(s.sum)} ×${s.count}`,
      s.index === conv.selected)),
  );
  empty.hidden = top.length > 0;
}
