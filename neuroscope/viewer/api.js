// Talking to the server: /v1/features/info, the chat API (streamed) and a request's feature stream, with the
// API key when the server asks for one (kept in sessionStorage: this tab only).

const KEY_STORE = "neuroscope-api-key";
const RETRY_MS = [500, 1000, 2000, 4000, 8000];

export class HTTPError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  return new HTTPError(res.status, message);
}

export async function fetchInfo() {
  const res = await fetch("/v1/features/info", { headers: authHeaders(), cache: "no-store" });
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

// Every feature's label with its source and score (the label chain): {"<index>": {label, source, score?,
// low_confidence?}}. Fetched again after each reply, since labels may arrive while the server runs.
export async function fetchLabelDetail() {
  const res = await fetch("/v1/features/labels?detail=true", { headers: authHeaders(), cache: "no-store" });
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

// Why a stream failed: "auth" (the key is missing or wrong), "down" (no answer) or "other".
async function diagnose() {
  try {
    await fetchInfo();
    return "other";
  } catch (err) {
    return err instanceof HTTPError && err.status === 401 ? "auth" : "down";
  }
}

function streamUrl(params) {
  if (apiKey()) params.set("api_key", apiKey());
  return `/v1/features/stream?${params}`;
}

// The live feature stream, held open for as long as the page is: its state is the connection state shown,
// and while it asks for prompt tokens the server computes them for every request (a request's own stream
// only starts once its id is known, after its prefill). Reopened whenever it drops.
export class LiveStream {
  constructor({ onState, onAuth }) {
    this.onState = onState;
    this.onAuth = onAuth;
    this.source = null;
    this.timer = null;
    this.includePrompt = false;
    this.ready = Promise.resolve();
  }

  open(includePrompt) {
    this.includePrompt = includePrompt;
    this.close();
    let resolve;
    this.ready = new Promise((r) => (resolve = r));
    const params = new URLSearchParams();
    if (includePrompt) params.set("include_prompt", "true");
    const source = (this.source = new EventSource(streamUrl(params)));
    source.onopen = () => {
      this.onState("connected");
      resolve();
    };
    source.onerror = async () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CONNECTING) return this.onState("reconnecting");
      // closed for good (an HTTP error, or the server went away): find out why, then open again
      const why = await diagnose();
      if (source !== this.source) return;
      if (why === "auth") {
        await this.onAuth();
        this.open(this.includePrompt);
      } else {
        this.onState(why === "down" ? "offline" : "reconnecting");
        this.timer = setTimeout(() => this.open(this.includePrompt), 2000);
      }
    };
  }

  close() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
  }
}

// POST a streamed chat completion. Calls onStart(requestId) once the response headers are in, onDelta(text)
// per content chunk; resolves with {text, finishReason}.
export async function streamChat(chatUrl, body, { onStart, onDelta }) {
  const res = await fetch(`${chatUrl}/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!res.ok) throw await errorOf(res);
  let requestId = res.headers.get("X-Request-Id");
  if (requestId) onStart(requestId);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", text = "", finishReason = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/\r$/, "");
      buffer = buffer.slice(cut + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return { text, finishReason, requestId };
      const chunk = JSON.parse(data);
      if (chunk.error) throw new HTTPError(500, chunk.error.message || "generation failed");
      if (!requestId && chunk.id) onStart((requestId = chunk.id));
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        text += choice.delta.content;
        onDelta(choice.delta.content);
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  }
  throw new HTTPError(0, "the chat stream ended before [DONE]");
}

// Follow one request's feature events: ?request_id= replays them from the start, so a dropped connection is
// simply reopened (events already seen are skipped by the caller). Returns a function that stops following.
export function followRequest(requestId, { includePrompt, onEvent, onComplete, onState, onFail, onAuth }) {
  let source = null, attempts = 0, finished = false, timer = null;

  function url() {
    const params = new URLSearchParams({ request_id: requestId });
    if (includePrompt) params.set("include_prompt", "true");
    return streamUrl(params);
  }

  function open() {
    timer = null;
    if (finished) return;
    source = new EventSource(url());
    source.onopen = () => { attempts = 0; onState("streaming"); };
    source.addEventListener("feature_activation", (e) => onEvent(JSON.parse(e.data)));
    source.addEventListener("generation_complete", (e) => {
      finished = true;
      source.close();
      onComplete(JSON.parse(e.data));
    });
    source.onerror = () => {
      source.close();
      if (!finished) retry();
    };
  }

  async function retry() {
    if (attempts >= RETRY_MS.length) {
      finished = true;
      onFail("lost the feature stream of this reply (the server may have restarted)");
      return;
    }
    onState("reconnecting");
    if ((await diagnose()) === "auth") {
      await onAuth();
      open();
      return;
    }
    timer = setTimeout(open, RETRY_MS[attempts++]);
  }

  open();
  return () => {
    finished = true;
    if (timer) clearTimeout(timer);
    if (source) source.close();
  };
}
