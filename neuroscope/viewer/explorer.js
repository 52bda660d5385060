// The feature explorer: search box (type-ahead over /v1/features/search), a feature's page (/v1/features/{i}),
// "Steer with this", and Inspect mode (/v1/features/inspect; its tokens join the conversation as prompt tokens,
// so hover and click work as they do on replies).

import { HTTPError, apiKey } from "./api.js";
import { shade, TOP_RGB } from "./colour.js";

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function getJSON(path, init = {}) {
  const res = await fetch(path, { cache: "no-store", ...init, headers: headers(init.headers) });
  let body = null;
  try {
    body = await res.json();
  } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const message = body && body.error && body.error.message ? body.error.message : `${res.status} ${res.statusText}`;
    throw new HTTPError(res.status, message);
  }
  return body;
}

export const searchFeatures = (q, limit = 12) =>
  getJSON(`/v1/features/search?q=${encodeURIComponent(q)}&limit=${limit}`);
export const fetchPage = (index) => getJSON(`/v1/features/${index}`);
export const inspectText = (text) => getJSON("/v1/features/inspect", {
  method: "POST", body: JSON.stringify({ text }), headers: { "Content-Type": "application/json" },
});

const num = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(3));

// ------------------------------------------------------------------ the page
function section(title, ...children) {
  const s = el("div", "page-section");
  s.append(el("h3", "", title), ...children);
  return s;
}

function examplesOf(page, key = "examples") {
  const windows = page[key] || [];
  if (!windows.length) return el("p", "muted", "No examples run (neuroscope labels generate makes one).");
  const list = el("ol", "examples");
  for (const ex of windows.slice(0, 10)) {
    const li = el("li", "example");
    if (ex.quantile !== undefined) li.dataset.quantile = String(ex.quantile);
    ex.tokens.forEach((t, j) => {
      const span = el("span", "ex-tok", t);
      const a = ex.activations[j];
      span.style.backgroundColor = shade(TOP_RGB, a, ex.max);
      if (a > 0) span.title = `${a}`;
      li.append(span);
    });
    li.append(el("span", "fval", (ex.quantile !== undefined ? `q${ex.quantile} · ` : "") + num(ex.max)));
    list.append(li);
  }
  return list;
}

function densityOf(page) {
  const d = page.density;
  if (!d) return el("p", "muted", "No histogram recorded.");
  const top = Math.max(...d.counts, 1);
  const chart = el("div", "density");
  chart.setAttribute("role", "img");
  chart.setAttribute("aria-label", "histogram of its nonzero activations");
  d.counts.forEach((c, j) => {
    const bar = el("i");
    bar.style.height = `${(100 * c) / top}%`;
    bar.title = `${num(d.edges[j])}–${num(d.edges[j + 1])}: ${c}`;
    chart.append(bar);
  });
  return chart;
}

function logitsOf(page) {
  const table = el("div", "logits");
  for (const side of ["positive", "negative"]) {
    const col = el("ol", `logit-col ${side}`);
    for (const t of page.logits[side]) {
      const li = el("li");
      li.append(el("span", "logit-tok", JSON.stringify(t.token)), el("span", "fval", num(t.value)));
      col.append(li);
    }
    const wrap = el("div");
    wrap.append(el("h4", "", side), col);
    table.append(wrap);
  }
  return table;
}

function neighboursOf(page) {
  const list = el("ol", "feature-list neighbours");
  for (const n of page.neighbours) {
    const b = el("button", "feat");
    b.type = "button";
    b.dataset.openFeature = String(n.index);
    b.append(el("span", "fid", `#${n.index}`), el("span", "flabel", n.label), el("span", "fval", n.cosine.toFixed(3)));
    const li = el("li");
    li.append(b);
    list.append(li);
  }
  return list;
}

export function renderPage(panel, page) {
  const h2 = el("h2", "", `Feature #${page.index} `);
  const steer = el("button", "link", "Steer with this");
  steer.type = "button";
  steer.id = "page-steer";
  steer.dataset.steerFeature = String(page.index);
  const close = el("button", "link", "close");
  close.type = "button";
  close.id = "page-close";
  h2.append(steer, close);
  const facts = el("dl", "facts");
  const fact = (k, v) => facts.append(el("dt", "", k), el("dd", "", v));
  fact("source", page.source + (page.score === null ? "" : `, score ${page.score.toFixed(2)}`));
  if (page.stats) {
    const s = page.stats;
    fact("fires on", `${(100 * s.firing_rate).toPrecision(3)} % of tokens`);
    fact("when it fires", `mean ${num(s.mean)}, std ${num(s.std)}, max ${num(s.max)}`);
  } else fact("statistics", "no calibration");
  const parts = [h2, el("p", "flabel-big", page.label)];
  if (page.description) parts.push(el("p", "description", page.description));
  parts.push(facts, section("Density", densityOf(page)), section("Top activations", examplesOf(page)),
    section("Across the activation range", examplesOf(page, "quantile_examples")),
    section("Logit effects", logitsOf(page)), section("Decoder neighbours", neighboursOf(page)));
  panel.replaceChildren(...parts);
  panel.dataset.feature = String(page.index);
  panel.hidden = false;
}

// ------------------------------------------------------------------ wiring
// onSteer(index): add the feature to the steering row; onInspected(text, result): show an inspected text;
// onError(message): the page's error bar.
export function initExplorer({ onSteer, onInspected, onError }) {
  const input = $("feature-search");
  const results = $("search-results");
  const panel = $("feature-page");
  let asked = 0;
  let timer = null;

  async function open(index) {
    const n = ++asked;
    try {
      const page = await fetchPage(index);
      if (n === asked) renderPage(panel, page);
    } catch (err) {
      onError(err.message);
    }
  }

  async function search() {
    const q = input.value.trim();
    if (!q) {
      results.hidden = true;
      return results.replaceChildren();
    }
    try {
      const r = await searchFeatures(q);
      if (input.value.trim() !== q) return; // typed on meanwhile
      results.replaceChildren(...r.results.map((h) => {
        const b = el("button", "hit");
        b.type = "button";
        b.dataset.openFeature = String(h.index);
        b.append(el("span", "fid", `#${h.index}`), el("span", "flabel", h.label),
          el("span", "muted", h.source + (h.score === null ? "" : ` ${h.score.toFixed(2)}`)));
        const li = el("li");
        li.append(b);
        return li;
      }));
      if (!r.results.length) results.append(el("li", "muted", "no feature matches"));
      results.hidden = false;
    } catch (err) {
      onError(err.message);
    }
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, 120);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      const first = results.querySelector("[data-open-feature]");
      if (first) first.click();
    } else if (e.key === "Escape") results.hidden = true;
  });

  document.addEventListener("click", (e) => {
    const target = e.target instanceof Element ? e.target : null;
    if (!target) return;
    const opener = target.closest("[data-open-feature]");
    if (opener) {
      results.hidden = true;
      return open(Number(opener.dataset.openFeature));
    }
    if (target.closest("#page-steer")) return onSteer(Number(panel.dataset.feature));
    if (target.closest("#page-close")) {
      panel.hidden = true;
      return;
    }
    if (!target.closest(".search")) results.hidden = true;
  });

  // Inspect mode: the chat box gives way to a box whose text is inspected, not answered.
  const toggle = $("inspect-toggle");
  toggle.addEventListener("click", () => {
    const on = toggle.getAttribute("aria-pressed") !== "true";
    toggle.setAttribute("aria-pressed", String(on));
    $("chat-form").hidden = on;
    $("inspect-form").hidden = !on;
    $(on ? "inspect-input" : "chat-input").focus();
  });
  $("inspect-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = $("inspect-input").value;
    if (!text.trim()) return;
    $("inspect-run").disabled = true;
    try {
      onInspected(text, await inspectText(text));
    } catch (err) {
      onError(err.message);
    } finally {
      $("inspect-run").disabled = false;
    }
  });

  return { open };
}
