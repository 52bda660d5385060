// The live viewer: chat through the chat API, follow each reply's features by request id, show them.

import {
  HTTPError, LiveStream, apiKey, fetchInfo, fetchLabelDetail, followRequest, setApiKey, streamChat,
} from "./api.js";
import { Conversation } from "./conversation.js";
import { initExplorer } from "./explorer.js";
import { renderFeature, renderToken, renderTop, setLabelDetail } from "./panels.js";
import { SteeringSet, renderSteering } from "./steering.js";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const STATE_TEXT = {
  connecting: "connecting",
  connected: "connected",
  streaming: "streaming",
  reconnecting: "reconnecting",
  offline: "server unreachable, retrying",
  key: "API key needed",
};

const conv = new Conversation($("conversation"));
let info = null;
let messages = []; // the chat history sent with each turn
let last = null; // the last message sent, {text, history}: what Resend sends again
let busy = false; // a chat request is under way
const steering = new SteeringSet(); // sent with every request while it holds a feature
let following = new Map(); // open feature streams of replies: stop function -> "streaming" | "reconnecting"
let liveState = "connecting";
let pinned = null; // the token whose features stay in the panel
let shown = null; // the token shown in the panel
let sidePending = false;

// ------------------------------------------------------------------ connection state and errors
function showState() {
  let state = liveState;
  if (state === "connected" && following.size) {
    state = [...following.values()].includes("reconnecting") ? "reconnecting" : "streaming";
  }
  $("connection").dataset.state = state;
  $("connection-text").textContent = STATE_TEXT[state];
}

function setLiveState(state) {
  liveState = state;
  showState();
}

function showError(message) {
  $("error-text").textContent = message;
  $("error-bar").hidden = false;
}

$("error-close").addEventListener("click", () => ($("error-bar").hidden = true));

// ------------------------------------------------------------------ API key
let keyPrompt = null;

function askKey() {
  if (keyPrompt) return keyPrompt;
  setLiveState("key");
  const dialog = $("key-dialog");
  $("key-error").hidden = !apiKey();
  $("key-error").textContent = "That key was not accepted.";
  $("key-input").value = "";
  keyPrompt = new Promise((resolve) => {
    $("key-form").addEventListener("submit", () => {
      setApiKey($("key-input").value.trim());
      keyPrompt = null;
      resolve();
    }, { once: true });
  });
  if (!dialog.open) dialog.showModal();
  return keyPrompt;
}

$("key-dialog").addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it

// ------------------------------------------------------------------ server info
async function loadInfo() {
  for (;;) {
    try {
      info = await fetchInfo();
      break;
    } catch (err) {
      if (err instanceof HTTPError && err.status === 401) await askKey();
      else {
        setLiveState("offline");
        await sleep(2000);
      }
    }
  }
  $("steer-index").placeholder = `feature 0–${info.d_sae - 1}`;
  $("steer-index").max = String(info.d_sae - 1);
  const topk = info.top_k ? ` · top-${info.top_k}` : "";
  const sae = `${info.sae} · layer ${info.layer} · ${info.d_sae} features${topk}`;
  $("model-info").textContent = `${info.model} · ${info.backend} · ${sae}`;
  $("model-info").title = `chat API: ${info.chat_url}\nlabels: ${info.labels.source}`;
  live.open($("include-prompt").checked);
  refreshLabels();
}

// The label chain's sources and scores, for the tooltips and the feature panel (decoration: a failure is ignored).
async function refreshLabels() {
  try {
    setLabelDetail(await fetchLabelDetail());
  } catch (_) {
    return;
  }
  if (conv.selected !== null) renderFeature($("feature-detail"), conv, info);
  if (shown) showToken(shown);
}

const live = new LiveStream({ onState: setLiveState, onAuth: askKey });
$("include-prompt").addEventListener("change", (e) => live.open(e.target.checked));

// ------------------------------------------------------------------ side panels
function showToken(tok) {
  shown = tok;
  renderToken($("token-detail"), tok, { pinned: tok === pinned, selected: conv.selected });
}

function pin(tok) {
  if (pinned) pinned.el.classList.remove("pinned");
  pinned = tok;
  if (tok) tok.el.classList.add("pinned");
  if (tok) showToken(tok);
}

function select(feature) {
  conv.select(conv.selected === feature ? null : feature);
  if (conv.selected !== null) explorer.open(conv.selected); // its page too
  if (shown) showToken(shown);
  renderFeature($("feature-detail"), conv, info);
  renderTop($("top-features"), $("top-features-empty"), conv);
}

function refreshSide() {
  if (sidePending) return;
  sidePending = true;
  requestAnimationFrame(() => {
    sidePending = false;
    renderTop($("top-features"), $("top-features-empty"), conv);
    if (conv.selected !== null) renderFeature($("feature-detail"), conv, info);
  });
}

const convEl = $("conversation");
convEl.addEventListener("mouseover", (e) => {
  const tok = conv.tokenAt(e.target);
  if (tok && !pinned && tok !== shown) showToken(tok);
});
convEl.addEventListener("click", (e) => {
  const tok = conv.tokenAt(e.target);
  if (tok) pin(tok === pinned ? null : tok);
});
document.addEventListener("click", (e) => {
  const target = e.target instanceof Element ? e.target : null;
  const feat = target && target.closest("[data-feature-index]");
  if (feat) return select(Number(feat.dataset.featureIndex));
  if (target && target.closest("#feature-clear")) return select(conv.selected);
  if (target && target.closest("#feature-steer")) return pickSteered(conv.selected);
  const unsteer = target && target.closest("[data-steer-remove]");
  if (unsteer) {
    steering.remove(Number(unsteer.dataset.steerRemove));
    return showSteering();
  }
  const ref = target && target.closest(".tokref");
  if (ref) {
    const tok = conv.tokens.find((t) => t.requestId === ref.dataset.requestId && String(t.index) === ref.dataset.ref
      && t.prompt === (ref.dataset.prompt === "true"));
    if (tok) {
      pin(tok);
      tok.el.scrollIntoView({ block: "nearest" });
    }
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !$("key-dialog").open) {
    pin(null);
    if (conv.selected !== null) select(conv.selected);
  }
});

// ------------------------------------------------------------------ chat
function nearBottom() {
  return convEl.scrollHeight - convEl.scrollTop - convEl.clientHeight < 80;
}

function follow(turn, requestId, includePrompt) {
  let stop = null;
  const done = () => {
    following.delete(stop);
    showState();
  };
  stop = followRequest(requestId, {
    includePrompt,
    onEvent: (event) => {
      const stick = nearBottom();
      if (conv.add(turn, event)) {
        if (!event.prompt) turn.setStatus(`streaming · ${turn.reply.childElementCount} tokens`);
        refreshSide();
        if (stick) convEl.scrollTop = convEl.scrollHeight;
      }
    },
    onComplete: (c) => {
      turn.setStatus(`${c.tokens} tokens · ${c.finish_reason}`);
      conv.finish(turn, c.finish_reason);
      if ("steering" in c) turn.setSteering(c.steering); // the spec as the server ran it
      if (c.error) turn.fail(c.error);
      done();
      refreshLabels();
    },
    onState: (s) => {
      if (following.has(stop)) following.set(stop, s);
      showState();
    },
    onFail: (message) => {
      turn.fail(message);
      turn.showPlainText();
      showError(message);
      done();
    },
    onAuth: askKey,
  });
  following.set(stop, "streaming");
  showState();
}

async function chat(body, turn, includePrompt) {
  for (;;) {
    try {
      return await streamChat(info.chat_url, body, {
        onStart: (requestId) => {
          turn.requestId = requestId;
          turn.root.dataset.requestId = requestId;
          follow(turn, requestId, includePrompt);
        },
        onDelta: (text) => (turn.text += text),
      });
    } catch (err) {
      if (err instanceof HTTPError && err.status === 401 && !turn.requestId) await askKey();
      else throw err;
    }
  }
}

// Sends `text` after `history` with the current steering; a new turn shows the reply.
async function send(text, history, resent) {
  const includePrompt = $("include-prompt").checked;
  if (includePrompt) await Promise.race([live.ready, sleep(3000)]); // so the server computes its prompt features
  last = { text, history };
  const spec = steering.spec();
  const turn = conv.addTurn(text, includePrompt, spec, resent);
  $("empty-hint").hidden = true;
  $("error-bar").hidden = true;
  convEl.scrollTop = convEl.scrollHeight;
  const body = {
    model: info.model,
    messages: [...history, { role: "user", content: text }],
    max_tokens: Number($("max-tokens").value) || undefined,
    temperature: Number($("temperature").value),
  };
  if (spec) body.steering = spec;
  try {
    const result = await chat(body, turn, includePrompt);
    messages = [...body.messages, { role: "assistant", content: result.text }];
  } catch (err) {
    const message = err instanceof HTTPError ? err.message
      : `cannot reach the chat API at ${info.chat_url} (${err.message}): `
        + "is the server up, and is this page's origin allowed?";
    turn.fail(message);
    showError(message);
  }
}

function setBusy(on) {
  busy = on;
  $("send-button").disabled = on;
  $("resend-button").disabled = on || !last;
}

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !info || busy) return;
  input.value = "";
  setBusy(true);
  try {
    await send(text, messages, false);
  } finally {
    setBusy(false);
    input.focus();
  }
});

// Resend: the last message again, after the same history (its reply, if any, is replaced in the history).
$("resend-button").addEventListener("click", async () => {
  if (!last || !info || busy) return;
  setBusy(true);
  try {
    await send(last.text, last.history, true);
  } finally {
    setBusy(false);
  }
});

// ------------------------------------------------------------------ steering
function showSteering() {
  renderSteering($("steer-list"), $("steer-none"), steering, (i) => conv.label(i));
  $("steer-value").hidden = $("steer-mode").value === "ablate"; // ablate takes no value
}

// The feature panel's "steer": the selected feature joins the steering list at once, with the mode and value
// shown (a missing value is asked for first), so the next send or Resend carries it.
function pickSteered(feature) {
  const value = $("steer-value"), mode = $("steer-mode").value;
  if (mode !== "ablate" && value.value.trim() === "") {
    $("steer-index").value = String(feature);
    return value.focus();
  }
  steering.set(feature, mode, mode === "ablate" ? undefined : Number(value.value));
  showSteering();
}

// Whether the index box holds a feature this SAE has (whole, 0..d_sae-1); "" (nothing typed yet) is allowed.
function indexAllowed(box) {
  if (box.validity.badInput) return false; // "-", "1e", ...: not a whole number
  const text = box.value.trim();
  if (text === "") return true;
  return /^\d+$/.test(text) && (!info || Number(text) < info.d_sae);
}

// The index box refuses, as they are typed, indices the SAE does not have: the last accepted value stays.
let acceptedIndex = "";
$("steer-index").addEventListener("input", (e) => {
  const box = e.target, note = $("steer-index-note");
  if (indexAllowed(box)) {
    acceptedIndex = box.value;
    note.hidden = true;
    return;
  }
  box.value = acceptedIndex;
  note.textContent = info ? `features are 0–${info.d_sae - 1}` : "a feature index is a whole number";
  note.hidden = false;
});

function addSteered() {
  const index = $("steer-index"), value = $("steer-value"), mode = $("steer-mode").value;
  if (index.value.trim() === "" || !indexAllowed(index)) return index.focus();
  if (mode !== "ablate" && value.value.trim() === "") return value.focus();
  // the server checks the rest (the value's range and size) and says what is wrong
  steering.set(Number(index.value), mode, mode === "ablate" ? undefined : Number(value.value));
  index.value = acceptedIndex = "";
  $("steer-index-note").hidden = true;
  showSteering();
}

$("steer-add").addEventListener("click", addSteered);
for (const id of ["steer-index", "steer-value"]) {
  $(id).addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault(); // not the chat form's submit
      addSteered();
    }
  });
}
$("steer-mode").addEventListener("change", showSteering);
$("steer-positions").addEventListener("change", (e) => (steering.positions = e.target.value));

$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("chat-form").requestSubmit();
  }
});

$("clear-button").addEventListener("click", () => {
  for (const stop of following.keys()) stop();
  following.clear();
  messages = [];
  last = null;
  setBusy(busy);
  pinned = shown = null;
  conv.clear();
  $("token-detail").textContent = "Hover a token to see its features; click it to keep them here.";
  renderFeature($("feature-detail"), conv, info);
  renderTop($("top-features"), $("top-features-empty"), conv);
  $("empty-hint").hidden = false;
  showState();
});

// ------------------------------------------------------------------ explorer
let inspected = 0;

function showInspected(text, result) {
  const id = `inspect-${++inspected}`;
  const turn = conv.addTurn(text, true, null);
  turn.requestId = id;
  turn.root.dataset.requestId = id;
  turn.root.classList.add("inspected");
  turn.reply.parentElement.hidden = true; // nothing was generated
  turn.prompt.querySelector("summary").firstChild.textContent = "inspected tokens ";
  for (const t of result.tokens) conv.add(turn, { ...t, request_id: id, token_index: t.position, prompt: true });
  $("empty-hint").hidden = true;
  refreshSide();
  convEl.scrollTop = convEl.scrollHeight;
}

const explorer = initExplorer({
  onSteer: (index) => {
    const mode = $("steer-mode").value;
    steering.set(index, mode, mode === "ablate" ? undefined : Number($("steer-value").value) || 8);
    showSteering();
  },
  onInspected: showInspected,
  onError: showError,
});

showSteering();
loadInfo();
