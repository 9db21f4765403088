// charlm playground. Uses only the public API: GET /v1/models, POST /v1/generate with stream: true
// (read with fetch: EventSource cannot POST). No framework, no build step.
"use strict";

const KEY_STORE = "charlm-api-key"; // sessionStorage: this tab only
const PARAMS = ["model", "prompt", "n", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "logprobs"];
const ALTERNATIVES = 5;
const $ = (id) => document.getElementById(id);
let cards = {}; // model id -> its /v1/models card
let running = null; // the AbortController of the request in flight
let nEdited = false;

// ----- API -----

function headers() {
  const h = { "content-type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) h.authorization = "Bearer " + key;
  return h;
}

async function apiError(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const e = (body && body.error) || { message: `${response.status} ${response.statusText}` };
  return { status: response.status, message: e.message, param: e.param, code: e.code,
           retryAfter: response.headers.get("retry-after") };
}

// Server-Sent Events from a fetch response: yields each `data:` payload parsed, until `[DONE]`.
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, cut).split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      buffer = buffer.slice(cut + 2);
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// ----- errors, shown next to the field they concern -----

function setError(where, text) {
  const slot = $("err-" + where) || $("err-request");
  slot.textContent = text;
  const field = $(where === "logprobs" ? "show-probs" : where);
  if (field && field.setAttribute) field.setAttribute("aria-invalid", "true");
}

function clearErrors() {
  document.querySelectorAll(".field-error").forEach((p) => { p.textContent = ""; });
  document.querySelectorAll("[aria-invalid]").forEach((f) => f.removeAttribute("aria-invalid"));
}

function showError(e) {
  if (e.status === 401) return askForKey(e.message);
  let where = PARAMS.includes(e.param) ? e.param : "request";
  let text = e.message;
  if (e.code === "model_not_found") where = "model";
  if (e.param === "logprobs") text = "This server cannot send probabilities: " + e.message;
  if (e.status === 503) {
    text = "The server is busy: " + e.message;
    if (e.retryAfter) text += ` Try again in ${e.retryAfter} s.`;
  }
  setError(where, text.charAt(0).toUpperCase() + text.slice(1));
}

function askForKey(message) {
  $("key-form").hidden = false;
  const hint = $("models-loading");
  if (hint) hint.textContent = "Enter the API key above to list the models.";
  $("err-key").textContent = message || "This server needs an API key.";
  $("api-key").focus();
}

// ----- models -----

function formatCount(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  return n >= 1e3 ? (n / 1e3).toFixed(0) + "k" : String(n);
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    return setError("model", "Could not reach the server: " + err.message);
  }
  if (!response.ok) return showError(await apiError(response));
  const list = (await response.json()).data;
  const box = $("models");
  box.querySelectorAll(".card, .hint").forEach((el) => el.remove());
  cards = {};
  for (const card of list) {
    cards[card.id] = card;
    const label = document.createElement("label");
    label.className = "card";
    const input = Object.assign(document.createElement("input"), { type: "radio", name: "model", value: card.id });
    const name = Object.assign(document.createElement("strong"), { textContent: card.id });
    const kind = Object.assign(document.createElement("span"), {
      className: "badge", textContent: card.format === "lines" ? "names" : "text",
      title: card.format === "lines" ? "one sample per line" : "running text",
    });
    const facts = Object.assign(document.createElement("span"), {
      className: "facts",
      textContent: `${card.arch} · ${formatCount(card.n_params)} params · test loss ${card.test_loss.toFixed(3)}`,
    });
    label.append(input, name, kind, facts);
    box.append(label);
  }
  if (!list.length) setError("model", "The server has no model loaded (see /ready).");
  const first = box.querySelector("input[name=model]");
  if (first) { first.checked = true; modelChanged(); }
}

function selectedCard() {
  const input = document.querySelector("input[name=model]:checked");
  return input ? cards[input.value] : null;
}

function modelChanged() {
  const card = selectedCard();
  if (!card) return;
  const lines = card.format === "lines";
  $("prompt").placeholder = lines ? "first letters, e.g. ka (may be empty)" : "e.g. ROMEO:";
  if (!nEdited) $("n").value = lines ? 8 : 1;
}

// ----- the request -----

function numberField(id, integer) {
  const raw = $(id).value.trim();
  if (raw === "" && !$(id).validity.badInput) return undefined;
  const value = raw === "" ? NaN : Number(raw);
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    setError(id, integer ? "Enter a whole number." : "Enter a number.");
    return null;
  }
  return value;
}

function readRequest(card) {
  const body = { model: card.id, prompt: $("prompt").value, stream: true };
  const spec = { n: true, max_new_tokens: true, temperature: false, top_k: true, top_p: false, seed: true };
  let ok = true;
  for (const [id, integer] of Object.entries(spec)) {
    const value = numberField(id, integer);
    if (value === null) ok = false;
    else if (value !== undefined) body[id] = value;
  }
  const stop = $("stop").value.split("\n").filter((s) => s !== "")
    .map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t"));
  if (stop.length) body.stop = stop;
  if ($("show-probs").checked) body.logprobs = ALTERNATIVES;
  return ok ? body : null;
}

function setRunning(on) {
  $("generate").disabled = on;
  $("stop-button").disabled = !on;
  document.body.classList.toggle("busy", on);
}

function status(text) { $("status").textContent = text; }

async function generate(event) {
  event.preventDefault();
  if (running) return;
  clearErrors();
  const card = selectedCard();
  if (!card) return setError("model", "Choose a model.");
  const body = readRequest(card);
  if (!body) return;
  $("samples").replaceChildren();
  $("legend").hidden = true;
  running = new AbortController();
  setRunning(true);
  status("Waiting for the server…");
  let out = null;
  try {
    const response = await fetch("/v1/generate", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal,
    });
    if (!response.ok) {
      showError(await apiError(response));
      return status("The request was refused: see the message by the field.");
    }
    out = new Output(card, body.n || 1, Boolean(body.logprobs));
    for await (const data of sseEvents(response)) {
      if (data.error) {
        showError({ ...data.error, status: 0 });
        return status("The request failed while streaming.");
      }
      out.add(data);
    }
  } catch (err) {
    if (err.name === "AbortError") status(`Stopped after ${out ? out.chars : 0} characters.`);
    else { setError("request", "Could not reach the server: " + err.message); status("The request failed."); }
  } finally {
    running = null;
    setRunning(false);
  }
}

// ----- output -----

// Per-character logprobs of one streamed choice, from OpenAI's completions shape {tokens, token_logprobs,
// top_logprobs: [{token: logprob}]}, as [{token, logprob, top: [[token, logprob], ...]}]; null without it.
function readLogprobs(lp) {
  if (!lp || !Array.isArray(lp.tokens)) return null;
  return lp.tokens.map((token, i) => ({
    token, logprob: lp.token_logprobs ? lp.token_logprobs[i] : null,
    top: Object.entries((lp.top_logprobs && lp.top_logprobs[i]) || {}),
  }));
}

const shown = (ch) => ({ " ": "␣", "\n": "↵", "\t": "⇥" })[ch] || ch;
const percent = (lp) => (lp == null ? "?" : (100 * Math.exp(lp)).toFixed(lp > Math.log(0.1) ? 0 : 1) + "%");

class Output {
  constructor(card, n, probs) {
    this.list = $("samples");
    this.list.replaceChildren();
    this.list.className = card.format;
    this.items = Array.from({ length: n }, () => this.list.appendChild(document.createElement("li")));
    this.probs = probs;
    this.shaded = false;
    this.chars = 0;
    $("legend").hidden = true;
  }

  add(data) {
    for (const c of data.choices || []) {
      const li = this.items[c.index];
      if (!li) continue;
      const lps = this.probs ? readLogprobs(c.logprobs) : null;
      if (c.text || lps) this.write(li, c.text || "", lps);
      if (c.finish_reason) li.dataset.finish = c.finish_reason;
      if (c.novel != null) this.mark(li, c.novel);
    }
    if (data.usage) this.done(data.usage, data.timing);
    else status(`Generating… ${this.chars} characters`);
  }

  mark(li, novel) {
    // A `lines` model that carries its data's hashes says whether a whole sample is new or a copy.
    const badge = document.createElement("span");
    badge.className = novel ? "badge novel" : "badge seen";
    badge.textContent = novel ? "new" : "seen in training";
    badge.title = novel ? "not in the data the model was trained on" : "this sample is in the training data";
    li.dataset.novel = novel ? "new" : "seen";
    li.append(badge);
  }

  write(li, text, lps) {
    this.chars += text.length;
    if (!lps) return li.append(text);
    // Match the tokens to the text from its end: the text may start with characters that have no score
    // (the prompt, unless it was scored), and a token may not be in the text at all (a lines model's
    // boundary mark: shown as an end mark when it was sampled, left out when it only led the prompt).
    let end = text.length;
    const inText = lps.map(() => false);
    for (let i = lps.length - 1; i >= 0; i--) {
      const token = lps[i].token;
      if (token && text.slice(end - token.length, end) === token) { inText[i] = true; end -= token.length; }
    }
    if (end > 0) li.append(text.slice(0, end));
    lps.forEach((t, i) => { if (inText[i] || t.logprob != null) li.append(this.shade(t, !inText[i])); });
    this.shaded = true;
    $("legend").hidden = false;
  }

  shade(t, isEnd) {
    const span = document.createElement("span");
    span.className = isEnd ? "tok end" : "tok";
    span.textContent = isEnd ? "∎" : t.token;
    const p = t.logprob == null ? 1 : Math.exp(t.logprob);
    span.style.setProperty("--p", p.toFixed(3));
    // Colour by surprise (-log p, full at 1%), so that 40% and 4% look different, as 90% and 99% do.
    span.style.setProperty("--s", Math.min(1, -Math.log(Math.max(p, 1e-9)) / Math.log(100)).toFixed(3));
    const name = isEnd ? "end of sample" : shown(t.token);
    const top = t.top.slice().sort((a, b) => b[1] - a[1]).map(([tok, lp]) => `${shown(tok)} ${percent(lp)}`);
    span.dataset.tip = t.logprob == null ? `${name}: no score (nothing before it)`
      : `${name}: ${percent(t.logprob)}` + (top.length ? `\ntop: ${top.join("   ")}` : "");
    span.setAttribute("aria-label", span.dataset.tip);
    return span;
  }

  done(usage, timing) {
    let text = `${this.items.length} sample${this.items.length > 1 ? "s" : ""} · ${usage.completion_tokens} new characters`;
    if (timing) text += ` · first character after ${timing.first_token_ms.toFixed(1)} ms · ${timing.total_ms.toFixed(1)} ms in all`;
    if (this.probs && !this.shaded) text += " · the server sent no probabilities";
    status(text);
  }
}

// ----- hover tip for shaded characters -----

function showTip(event) {
  const tip = $("tip");
  const span = event.target.closest ? event.target.closest(".tok") : null;
  if (!span) { tip.hidden = true; return; }
  tip.textContent = span.dataset.tip;
  const box = span.getBoundingClientRect();
  tip.style.left = `${box.left + window.scrollX}px`;
  tip.style.top = `${box.bottom + window.scrollY + 6}px`;
  tip.hidden = false;
}

// ----- wiring -----

document.addEventListener("DOMContentLoaded", () => {
  $("controls").addEventListener("submit", generate);
  $("stop-button").addEventListener("click", () => running && running.abort());
  $("models").addEventListener("change", modelChanged);
  $("n").addEventListener("input", () => { nEdited = true; });
  $("samples").addEventListener("mouseover", showTip);
  $("samples").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return askForKey("Enter a key.");
    sessionStorage.setItem(KEY_STORE, key);
    $("key-form").hidden = true;
    clearErrors();
    loadModels();
  });
  loadModels();
});
