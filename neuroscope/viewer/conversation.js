// The conversation as shown: turns, one element per token (data-token-index), shading, and the running
// per-feature figures the side panels read.

import { PICKED_RGB, TOP_RGB, shade } from "./colour.js";
import { describeSpec } from "./steering.js";

const SPECIAL_TEXT = /^<[^<>\s]+>$/; // <bos>, <start_of_turn>, ... in prompt tokens
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g; // tab and newline lay text out: kept

// Control characters drawn as visible symbols rather than boxes or nothing: C0 as the Control Pictures block
// (\u0001 -> ␁, \r -> ␍), DEL as ␡, C1 (no picture of their own) as \x85.
export function visible(text) {
  return text.replace(CONTROL, (c) => {
    const code = c.charCodeAt(0);
    if (code < 0x20) return String.fromCharCode(0x2400 + code);
    if (code === 0x7f) return "\u2421";
    return `\\x${code.toString(16)}`;
  });
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class Turn {
  constructor(userText, includePrompt, steering, resent) {
    this.root = el("article", "turn");
    const user = el("div", "msg user");
    user.append(el("div", "role", resent ? "you · resent" : "you"), el("div", "text", visible(userText)));
    this.prompt = el("details", "prompt");
    this.prompt.open = true;
    this.promptCount = el("span", "muted", "");
    const summary = el("summary", "", "prompt tokens ");
    summary.append(this.promptCount);
    this.promptTokens = el("div", "tokens");
    this.prompt.append(summary, this.promptTokens);
    this.prompt.hidden = !includePrompt;
    const reply = el("div", "msg assistant");
    const role = el("div", "role", "model ");
    this.status = el("span", "turn-status", "waiting…");
    this.badge = el("span", "steer-badge");
    role.append(this.status, this.badge);
    this.reply = el("div", "tokens reply");
    this.error = el("div", "turn-error");
    this.error.hidden = true;
    reply.append(role, this.reply, this.error);
    this.root.append(user, this.prompt, reply);
    this.requestId = null;
    this.text = "";
    this.setSteering(steering);
  }

  // The steering this reply was asked for (and, once complete, what the server says it ran), or null.
  setSteering(spec) {
    this.badge.hidden = !spec;
    this.badge.textContent = spec ? `steered: ${describeSpec(spec)}` : "";
    this.reply.classList.toggle("steered", Boolean(spec));
  }

  setStatus(text) {
    this.status.textContent = text;
  }

  fail(message) {
    this.error.textContent = message;
    this.error.hidden = false;
    this.setStatus("failed");
  }

  // When the feature stream is lost, still show what the chat API said.
  showPlainText() {
    if (this.text && !this.reply.childElementCount) this.reply.append(el("span", "plain", this.text));
  }
}

function tokenElement(tok) {
  const node = el("span", "tok");
  node.dataset.tokenIndex = String(tok.index);
  node.dataset.requestId = tok.requestId;
  if (tok.prompt) node.dataset.prompt = "true";
  if (tok.steered) node.classList.add("steered");
  if (tok.special) {
    node.classList.add("special");
    // drawn by its own name (<start_of_turn>, <pad>); only the step that ends the reply reads "EOS" (finish())
    node.textContent = visible(tok.text || tok.name || "EOS");
  } else if (tok.text === "") {
    node.classList.add("empty"); // e.g. the first byte of a character split across tokens
  } else {
    node.textContent = visible(tok.text);
    if (tok.prompt && SPECIAL_TEXT.test(tok.text)) node.classList.add("special");
  }
  return node;
}

export class Conversation {
  constructor(root) {
    this.root = root;
    this.clear();
  }

  clear() {
    this.root.replaceChildren();
    this.tokens = []; // every rendered token, in arrival order
    this.seen = new Set(); // "request:kind:index" already rendered (a reconnect replays from the start)
    this.tokenOf = new WeakMap(); // element -> token
    this.stats = new Map(); // feature -> {index, label, sum, count, max} over generated tokens
    this.peak = new Map(); // feature -> largest activation over every rendered token
    this.maxTop = 0; // largest top activation over every rendered token
    this.generated = 0;
    this.selected = null; // the feature highlighted across the conversation
  }

  addTurn(userText, includePrompt, steering = null, resent = false) {
    const turn = new Turn(userText, includePrompt, steering, resent);
    this.root.append(turn.root);
    return turn;
  }

  // One feature_activation event -> one token element; returns the token, or null when already shown.
  add(turn, event) {
    const prompt = event.prompt === true;
    const key = `${event.request_id}:${prompt ? "p" : "g"}:${event.token_index}`;
    if (this.seen.has(key)) return null;
    this.seen.add(key);
    const features = Array.isArray(event.top_features) ? event.top_features : [];
    const tok = {
      requestId: event.request_id,
      index: event.token_index,
      prompt,
      special: event.special === true,
      steered: event.steered === true, // read from a steered residual
      text: typeof event.token === "string" ? event.token : "",
      name: typeof event.special_token === "string" ? event.special_token : "", // a special token's own name
      position: event.position,
      l0: event.l0,
      filtered: typeof event.filtered_count === "number" ? event.filtered_count : undefined, // under a filter
      features,
      top: features.length ? features[0].activation : 0,
      acts: new Map(features.map((f) => [f.index, f.activation])),
    };
    tok.el = tokenElement(tok);
    this.tokenOf.set(tok.el, tok);
    (prompt ? turn.promptTokens : turn.reply).append(tok.el);
    if (prompt) turn.promptCount.textContent = `(${turn.promptTokens.childElementCount})`;
    this.tokens.push(tok);
    this.count(tok);
    let repaint = false;
    for (const f of features) {
      if (f.activation > (this.peak.get(f.index) || 0)) {
        this.peak.set(f.index, f.activation);
        repaint ||= f.index === this.selected;
      }
    }
    if (tok.top > this.maxTop) {
      this.maxTop = tok.top;
      repaint ||= this.selected === null;
    }
    if (repaint) this.repaint();
    else this.paint(tok);
    return tok;
  }

  // The reply ended: a special token that ended it (finish_reason "stop") is the end of sequence, shown as such.
  finish(turn, finishReason) {
    const last = turn.reply.lastElementChild;
    const tok = last ? this.tokenOf.get(last) : null;
    if (finishReason !== "stop" || !tok || !tok.special || tok.text) return;
    tok.eos = true;
    tok.el.textContent = "EOS";
    tok.el.title = tok.name ? `end of sequence: ${tok.name}` : "end of sequence";
  }

  count(tok) {
    if (tok.prompt) return; // prompts repeat the whole conversation each turn: only replies count
    this.generated += 1;
    for (const f of tok.features) {
      let s = this.stats.get(f.index);
      if (!s) this.stats.set(f.index, (s = { index: f.index, label: f.label, sum: 0, count: 0, max: 0 }));
      s.sum += f.activation;
      s.count += 1;
      s.max = Math.max(s.max, f.activation);
    }
  }

  tokenAt(node) {
    const t = node instanceof Element ? node.closest(".tok") : null;
    return t ? this.tokenOf.get(t) || null : null;
  }

  paint(tok) {
    if (this.selected === null) {
      tok.el.style.backgroundColor = shade(TOP_RGB, tok.top, this.maxTop);
      tok.el.classList.remove("lit");
      return;
    }
    const a = tok.acts.get(this.selected) || 0;
    tok.el.style.backgroundColor = shade(PICKED_RGB, a, this.peak.get(this.selected) || 0);
    tok.el.classList.toggle("lit", a > 0);
  }

  repaint() {
    for (const tok of this.tokens) this.paint(tok);
  }

  select(feature) {
    this.selected = feature;
    this.repaint();
  }

  label(feature) {
    for (const tok of this.tokens) {
      const f = tok.features.find((x) => x.index === feature);
      if (f) return f.label;
    }
    return `feature_${feature}`;
  }

  // Tokens where `feature` is among the top-k, strongest first.
  tokensOf(feature) {
    return this.tokens.filter((t) => t.acts.has(feature)).sort((a, b) => b.acts.get(feature) - a.acts.get(feature));
  }

  topFeatures(n) {
    return [...this.stats.values()].sort((a, b) => b.sum - a.sum).slice(0, n);
  }
}
