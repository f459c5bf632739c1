// loratune playground: lists the server's adapters and shows their answers to a text.
// Plain DOM code, no framework and no build step. Text from users and from the server is only ever
// put into the page through textContent and DOM nodes (never innerHTML), so it cannot inject markup.
"use strict";

const KEY_STORAGE = "loratune.apiKey";
const ENTITY_COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

const state = {
  adapters: [], // the records of GET /v1/adapters
  mode: "single", // "single" or "mixed"
  selected: null, // the adapter of single mode
  chosen: new Set(), // the adapters of mixed mode
  busy: false,
  answered: false, // whether the results show the current request's answer (or part of it)
};

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------ DOM helpers
/** An element with attributes (`class`, `data-*`, others) and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function formatNumber(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
}

// ------------------------------------------------------------------------------------------ the API
class ApiError extends Error {}

function headers(json) {
  const out = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/** fetch with the API key; a non-2xx answer throws its `{"error": {"message"}}` as an ApiError. */
async function request(path, options = {}) {
  const init = { method: options.method || "GET", headers: headers(options.body !== undefined) };
  if (options.body !== undefined) init.body = JSON.stringify(options.body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(`cannot reach the server (${err.message})`);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(message);
}

async function getJson(path, body) {
  const response = await request(path, body === undefined ? {} : { method: "POST", body });
  return response.json();
}

/** The JSON payloads of a server-sent-events answer, until `data: [DONE]`. */
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, cut).split("\n");
      buffer = buffer.slice(cut + 2);
      const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// ------------------------------------------------------------------------------------------ errors
function showError(message) {
  const box = $("error");
  box.replaceChildren(el("strong", {}, "Error: "), message);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// ------------------------------------------------------------------------------------------ adapters
async function loadAdapters() {
  try {
    const { adapters } = await getJson("/v1/adapters");
    state.adapters = adapters;
    keepSelection();
    chooseSelectedInMixedMode();
    renderAdapters();
  } catch (err) {
    renderAdapterMessage(err.message);
    throw err;
  }
}

async function loadHealth() {
  try {
    const health = await getJson("/health");
    const base = String(health.base_model || "not loaded yet").split("/").pop();
    const loaded = `${health.loaded} adapter${health.loaded === 1 ? "" : "s"} loaded`;
    $("server").textContent = `base model: ${base} · ${loaded}`;
  } catch (err) {
    $("server").textContent = "server unreachable";
  }
}

/** Keep the selection valid: drop names that left the registry, default to the first usable adapter. */
function keepSelection() {
  const usable = state.adapters.filter((a) => !a.error).map((a) => a.name);
  if (!usable.includes(state.selected)) state.selected = usable[0] || null;
  state.chosen = new Set([...state.chosen].filter((n) => usable.includes(n)));
}

function renderAdapterMessage(message) {
  $("adapters").replaceChildren(el("p", { class: "muted" }, `Adapters unavailable: ${message}`));
}

function renderAdapters() {
  const focused = document.activeElement && document.activeElement.dataset.name;
  const list = $("adapters");
  if (!state.adapters.length) {
    list.replaceChildren(el("p", { class: "muted" }, "The registry holds no adapters."));
    return;
  }
  list.replaceChildren(...state.adapters.map(adapterRow));
  if (focused) list.querySelector(`input[data-name="${CSS.escape(focused)}"]`)?.focus();
  updateTokensField();
}

function adapterRow(a) {
  const mixed = state.mode === "mixed";
  const id = `adapter-${a.name}`;
  const input = el("input", {
    type: mixed ? "checkbox" : "radio", name: mixed ? "chosen" : "selected", id, value: a.name,
    "data-name": a.name, disabled: Boolean(a.error),
    checked: mixed ? state.chosen.has(a.name) : state.selected === a.name,
  });
  input.addEventListener("change", () => onAdapterPicked(a.name, input.checked));
  return el("label", { class: "adapter", for: id, "data-adapter": a.name },
    input,
    el("span", { class: "adapter-body" },
      el("span", { class: "adapter-name" }, a.name),
      el("span", { class: "chips" }, adapterChips(a)),
      a.error ? el("span", { class: "adapter-error" }, a.error) : null));
}

function adapterChips(a) {
  if (a.error) return [el("span", { class: "chip warn" }, "unreadable")];
  const labels = Array.isArray(a.labels) ? `${a.labels.length} labels` : "no labels";
  return [
    el("span", { class: `chip task task-${a.task}`, "data-field": "task" }, a.task),
    el("span", { class: "chip", "data-field": "labels" }, labels),
    el("span", { class: "chip", "data-field": "rank", title: "LoRA rank" }, `r=${a.r ?? "—"}`),
    el("span", { class: "chip", "data-field": "metric", title: "eval metric from summary.json" }, metricText(a.metric)),
    stateChip(a),
  ];
}

function metricText(metric) {
  if (!metric || typeof metric.value !== "number") return "metric —";
  return `${metric.name} ${formatNumber(metric.value)} (${metric.split})`;
}

function stateChip(a) {
  if (a.available === false) {
    return [el("span", { class: "chip warn", "data-field": "state" }, "unloaded"), loadButton(a.name)];
  }
  const text = a.pinned ? "pinned" : a.loaded ? "loaded" : "not loaded";
  return el("span", { class: `chip state ${a.loaded ? "on" : ""}`, "data-field": "state" }, text);
}

/** A button that loads an unloaded adapter again (POST /v1/adapters/NAME; it needs the key when one is set). */
function loadButton(name) {
  const button = el("button", { type: "button", class: "chip-button", "data-load": name }, "Load");
  button.setAttribute("aria-label", `Load adapter ${name}`);
  button.addEventListener("click", async (event) => {
    event.preventDefault(); // inside the row's label: do not pick the adapter too
    clearError();
    try {
      await request(`/v1/adapters/${encodeURIComponent(name)}`, { method: "POST" });
      await loadAdapters();
    } catch (err) {
      showError(err.message);
    }
  });
  return button;
}

function onAdapterPicked(name, checked) {
  if (state.mode === "single") state.selected = name;
  else if (checked) state.chosen.add(name);
  else state.chosen.delete(name);
  updateTokensField();
}

function adapterNamed(name) {
  return state.adapters.find((a) => a.name === name);
}

/** The max-tokens field matters only for a causal-lm adapter streamed in single mode. */
function updateTokensField() {
  const a = adapterNamed(state.selected);
  $("tokens-field").hidden = !(state.mode === "single" && a && a.task === "causal-lm");
}

function setMode(mode, render = true) {
  state.mode = mode;
  chooseSelectedInMixedMode();
  $("mode-hint").textContent = mode === "mixed"
    ? "Tick several adapters: one mixed request sends the text to all of them."
    : "Pick one adapter.";
  if (render) renderAdapters();
}

/** Mixed mode with nothing ticked starts from the adapter of single mode. */
function chooseSelectedInMixedMode() {
  if (state.mode === "mixed" && state.chosen.size === 0 && state.selected) state.chosen.add(state.selected);
}

/** The mode the page shows: a browser restores the mode's radio when the user comes back to the page. */
function modeShown() {
  const checked = document.querySelector('input[name="mode"]:checked');
  return checked ? checked.value : "single";
}

// ------------------------------------------------------------------------------------------ results
function card(a, ...body) {
  return el("article", { class: "card", "data-adapter": a.name, "data-task": a.task },
    el("header", { class: "card-head" },
      el("h3", {}, a.name),
      el("span", { class: `chip task task-${a.task}` }, a.task)),
    body);
}

function renderResult(a, record) {
  if (a.task === "token-cls") return entityCard(a, record);
  if (a.task === "causal-lm") return completionCard(a, record.text, record.completion, "(the server's default length)");
  return labelCard(a, record);
}

/** seq-cls: the label, then a probability bar per label (in label order, the top one highlighted). */
function labelCard(a, record) {
  const bars = Object.entries(record.probs).map(([label, p]) => {
    const top = label === record.label;
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    return el("li", { class: top ? "bar top" : "bar", "data-label": label, "data-prob": p },
      el("span", { class: "bar-name" }, label),
      el("span", { class: "track", role: "presentation" }, fill),
      el("span", { class: "bar-value" }, formatNumber(p)));
  });
  return card(a,
    el("p", { class: "answer" },
      el("span", { class: "label" }, record.label),
      el("span", { class: "muted" }, ` ${(100 * record.confidence).toFixed(1)}% confident`)),
    el("ol", { class: "bars", "aria-label": "probability per label" }, bars));
}

/** token-cls: the text with its entities highlighted by character span, a legend and a table. */
function entityCard(a, record) {
  const colours = entityColours(a.labels || [], record.entities);
  const found = record.entities.length;
  return card(a,
    el("p", { class: "answer" }, found ? `${found} entit${found === 1 ? "y" : "ies"}` : "No entities found"),
    el("p", { class: "ner-text" }, highlighted(record.text, record.entities, colours)),
    legend(colours),
    found ? entityTable(record.entities, colours) : null);
}

/** A colour per entity type: the adapter's types (B-PER, I-PER -> PER) in label order, then any others. */
function entityColours(labels, entities) {
  const types = labels.filter((l) => l !== "O").map((l) => l.replace(/^[BIESLU]-/, ""));
  entities.forEach((e) => types.push(e.type));
  const colours = new Map();
  for (const t of types) if (!colours.has(t)) colours.set(t, ENTITY_COLOURS[colours.size % ENTITY_COLOURS.length]);
  return colours;
}

/** The text as text nodes and <mark>s cut at the entities' [start, end) character spans. The server counts
 * code points (Python's characters), so the text is cut as an array of code points, not of UTF-16 units:
 * an emoji before an entity counts one, not two. */
function highlighted(text, entities, colours) {
  const chars = Array.from(text);
  const cut = (a, b) => chars.slice(a, b).join("");
  const parts = [];
  let at = 0;
  for (const e of [...entities].sort((x, y) => x.start - y.start)) {
    if (e.start < at || e.end > chars.length) continue; // overlapping or out of range: not drawn
    if (e.start > at) parts.push(cut(at, e.start));
    const mark = el("mark", {
      class: "entity", "data-type": e.type, "data-start": e.start, "data-end": e.end,
      title: `${e.type} · confidence ${formatNumber(e.confidence, 2)}`,
    }, cut(e.start, e.end));
    mark.style.setProperty("--entity", colours.get(e.type));
    parts.push(mark);
    at = e.end;
  }
  parts.push(cut(at));
  return parts;
}

function swatch(colour) {
  const dot = el("span", { class: "swatch", "aria-hidden": "true" });
  dot.style.setProperty("--entity", colour);
  return dot;
}

function legend(colours) {
  return el("ul", { class: "legend", "aria-label": "entity types" },
    [...colours].map(([type, colour]) => el("li", {}, swatch(colour), type)));
}

function entityTable(entities, colours) {
  const rows = entities.map((e) => el("tr", {},
    el("td", {}, swatch(colours.get(e.type)), e.type),
    el("td", {}, e.text),
    el("td", { class: "num" }, `${e.start}–${e.end}`),
    el("td", { class: "num" }, formatNumber(e.confidence, 2))));
  const titles = ["Type", "Text", "Span", "Score"];
  const head = el("tr", {}, titles.map((t, i) => el("th", { scope: "col", class: i > 1 && "num" }, t)));
  return el("div", { class: "table-wrap" },
    el("table", { class: "entities" }, el("thead", {}, head), el("tbody", {}, rows)));
}

/** causal-lm: the prompt, then the completion (filled in at once, or chunk by chunk while streaming). */
function completionCard(a, prompt, completion = "", status = "streaming…") {
  const out = el("span", { class: "completion", "data-chunks": 0 }, completion);
  return card(a,
    el("p", { class: "lm-text" }, el("span", { class: "prompt" }, prompt), " ", out),
    el("p", { class: "lm-status muted small" }, status));
}

// ------------------------------------------------------------------------------------------ predicting
async function predict() {
  const text = $("text").value;
  if (state.mode === "mixed") return predictMixed(text);
  const a = adapterNamed(state.selected);
  if (!a) throw new ApiError("choose an adapter first");
  if (a.task === "causal-lm") return streamCompletion(a, text);
  const { predictions } = await getJson("/v1/predict", { adapter: a.name, texts: [text] });
  showResults(renderResult(a, predictions[0]));
}

/** One mixed request for every chosen adapter; one card each, side by side, in list order. */
async function predictMixed(text) {
  const chosen = state.adapters.filter((a) => state.chosen.has(a.name));
  if (!chosen.length) throw new ApiError("tick at least one adapter to compare");
  const items = chosen.map((a) => ({ adapter: a.name, text }));
  const { predictions } = await getJson("/v1/predict", { items });
  showResults(...predictions.map((p, i) => renderResult(chosen[i], p)));
}

/** POST /v1/completions with stream: true; each SSE chunk's text is appended as it comes. */
async function streamCompletion(a, text) {
  const maxTokens = Number.parseInt($("max-tokens").value, 10) || undefined;
  const body = { model: a.name, prompt: text, max_tokens: maxTokens, stream: true };
  const response = await request("/v1/completions", { method: "POST", body });
  const shown = completionCard(a, text);
  showResults(shown);
  const out = shown.querySelector(".completion");
  let chunks = 0;
  let finish = null;
  for await (const event of sseEvents(response)) {
    if (event.error) throw new ApiError(event.error.message);
    const choice = event.choices[0];
    if (choice.text) {
      out.append(choice.text);
      out.dataset.chunks = ++chunks;
    }
    if (choice.finish_reason) finish = { reason: choice.finish_reason, usage: event.usage };
  }
  shown.querySelector(".lm-status").textContent = finishText(finish);
}

function finishText(finish) {
  if (!finish) return "stream ended";
  const tokens = finish.usage ? ` · ${finish.usage.completion_tokens} new tokens` : "";
  const why = finish.reason === "stop" ? "end of sequence" : "token limit";
  return `finished: ${why}${tokens}`;
}

function showResults(...cards) {
  $("results").replaceChildren(...cards);
  state.answered = true;
}

async function onSubmit(event) {
  event.preventDefault();
  if (state.busy) return;
  setBusy(true);
  clearError();
  try {
    await predict();
    $("results").dataset.state = "done";
  } catch (err) {
    $("results").dataset.state = "error";
    if (!state.answered) $("results").replaceChildren(); // no older answer under the error; a half stream stays
    showError(err.message);
  } finally {
    setBusy(false);
    refreshQuietly(); // loaded/pinned states may have changed
  }
}

function setBusy(busy) {
  state.busy = busy;
  if (busy) state.answered = false;
  $("predict").disabled = busy;
  $("predict").textContent = busy ? "Predicting…" : "Predict";
  $("results").setAttribute("aria-busy", String(busy));
  if (busy) $("results").dataset.state = "busy";
}

function refreshQuietly() {
  loadAdapters().catch(() => {});
  loadHealth();
}

// ------------------------------------------------------------------------------------------ start
function wire() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key.dispatchEvent(new Event("change"));
  });
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY_STORAGE, key.value.trim());
    else localStorage.removeItem(KEY_STORAGE);
    clearError();
    refreshQuietly();
  });
  document.querySelectorAll('input[name="mode"]').forEach((r) => r.addEventListener("change", () => setMode(r.value)));
  $("refresh").addEventListener("click", () => loadAdapters().then(clearError, (err) => showError(err.message)));
  $("predict-form").addEventListener("submit", onSubmit);
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("predict-form").requestSubmit();
  });
}

// A browser restores the form it showed (the mode's radio) by the time the page is shown, after DOMContentLoaded.
window.addEventListener("pageshow", () => {
  if (modeShown() !== state.mode) setMode(modeShown(), state.adapters.length > 0);
});

document.addEventListener("DOMContentLoaded", () => {
  wire();
  setMode(modeShown(), false);
  loadHealth();
  loadAdapters().catch((err) => showError(err.message));
});
