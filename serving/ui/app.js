// galaxyvit web page (GET /ui): plain JavaScript, no framework, no build step.
// It calls the service's endpoints relative to the page: GET models, POST classify (one image per request),
// POST explain (the attention map) and POST feedback. Colours follow galaxyvit/overlay.py.
"use strict";

const KEY_STORAGE = "galaxyvit-api-key";
const FITS = /\.(fits?|fts)$/i;
const POSITIVE = [1.0, 0.1, 0.1], NEGATIVE = [0.1, 0.3, 1.0]; // signed maps, as galaxyvit/overlay.py
const DEFAULT_OPACITY = 0.6;

const state = { models: [], cards: [], run: 0 };
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- small helpers

/** An element with attributes (on* become listeners) and children (strings become text, never HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const score = (x) => (Math.abs(x) >= 1e4 ? x.toExponential(2) : x.toFixed(2));
const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";
const endpoint = (path) => new URL(path, document.baseURI).href;

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An answer the page could not use, in plain words (`message`) with the service's own (`detail`). */
class ServiceProblem extends Error {
  constructor(message, detail = "", status = 0) {
    super(message);
    this.detail = detail;
    this.status = status;
  }
}

/** What an error answer means for the person at the page. */
function plainWords(status, body, retryAfter, fileName) {
  const kind = body.kind || "";
  const wait = retryAfter ? ` Try again in ${retryAfter} s.` : " Try again in a moment.";
  switch (status) {
    case 401:
      return "This service needs an API key. Enter your key under “API key” in the settings above.";
    case 403:
      return "Your API key may not do this (feedback only goes to predictions made with the same key).";
    case 409:
      return "Feedback for this prediction was already recorded.";
    case 413:
      if (kind === "too_many_images") return "Too many images in one request for this service.";
      return `${fileName ? `“${fileName}” is` : "This is"} too large for this service.`;
    case 415:
      return `${fileName ? `“${fileName}” is` : "This is"} not an image the service can read ` +
        "(JPEG, PNG, TIFF, GIF, BMP, WebP or FITS).";
    case 429:
      return kind === "rate_limited" ? `Too much feedback from this key.${wait}` : `The service is busy.${wait}`;
    case 503:
      return `The service is starting, draining or overloaded.${wait}`;
    default:
      if (status >= 400 && status < 500) return "The service could not use this request.";
      return `The service failed (HTTP ${status}).${wait}`;
  }
}

/** fetch + JSON, or a ServiceProblem in plain words. */
async function call(path, options = {}, fileName = "") {
  let response;
  try {
    response = await fetch(endpoint(path), { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (error) {
    throw new ServiceProblem(`Could not reach the service at ${location.origin}: is it running?`, String(error));
  }
  if (response.ok) return response;
  let body = {};
  try { body = await response.json(); } catch { body = { error: await response.text().catch(() => "") }; }
  const message = plainWords(response.status, body, response.headers.get("Retry-After"), fileName);
  const detail = `HTTP ${response.status}${body.kind ? ` ${body.kind}` : ""}: ${body.error || ""}`;
  throw new ServiceProblem(message, detail, response.status);
}

function setStatus(text) { $("status").textContent = text; }

// ---------------------------------------------------------------- models and settings

const currentModel = () => state.models.find((m) => m.name === $("model").value);
const tta = () => ($("tta").checked ? 8 : 1);

function describeModel(model) {
  const accuracy = [["test", model.test_acc], ["validation", model.valid_acc]]
    .filter(([, value]) => typeof value === "number")
    .map(([split, value]) => `${split} accuracy ${percent(value)}`);
  const calibration = model.calibration ? `calibrated (T = ${model.calibration.temperature.toFixed(2)})` : "not calibrated";
  const rule = model.ood ? `not-a-galaxy check: ${model.ood.method.replace("_", " ")} score` : "no not-a-galaxy check";
  return `${model.family} ${model.variant}, ${accuracy.join(", ") || "accuracy unknown"}; ${calibration}; ${rule}; ` +
    `runs on ${model.provider}. Classes: ${model.classes.join(", ")}.`;
}

async function loadModels() {
  const select = $("model");
  try {
    const answer = await (await call("models")).json();
    state.models = answer.models;
    select.replaceChildren(...answer.models.map((m) =>
      el("option", { value: m.name, selected: m.name === answer.default }, m.name)));
    select.disabled = false;
    $("model-info").textContent = describeModel(currentModel());
    setStatus("");
  } catch (problem) {
    select.replaceChildren(el("option", {}, "no models"));
    $("model-info").textContent = "";
    setStatus(`${problem.message} (${problem.detail || "no answer"})`);
    if (problem.status === 401) { $("key-box").open = true; $("api-key").focus(); }
  }
}

function useKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
  $("key-status").textContent = key ? "key set for this tab" : "no key";
  loadModels().then(classifyAll);
}

// ---------------------------------------------------------------- one card per image

function addCards(files) {
  for (const file of files) {
    const card = { file, id: state.cards.length, prediction: null, node: null };
    card.node = el("article", { class: "result", "data-file": file.name, "data-state": "pending" });
    state.cards.push(card);
    $("results").append(card.node);
    renderPending(card);
  }
  classifyAll();
}

/** A placeholder for what the browser cannot show (FITS, often TIFF); the attention figure shows the server's crop. */
function placeholder(text) {
  return [el("div", { class: "placeholder", role: "img", "aria-label": `${text} file: no preview in the browser` }, text),
    el("figcaption", {}, "no preview in the browser")];
}

function thumbnail(card) {
  if (FITS.test(card.file.name)) return el("figure", { class: "thumb" }, placeholder("FITS"));
  card.url = card.url || URL.createObjectURL(card.file);
  const figure = el("figure", { class: "thumb" });
  const image = el("img", { src: card.url, alt: `uploaded image ${card.file.name}`,
    onerror: () => figure.replaceChildren(...placeholder(card.file.name.split(".").pop().toUpperCase())) });
  figure.append(image, el("figcaption", {}, "your image (whole)"));
  return figure;
}

function renderPending(card) {
  card.node.dataset.state = "pending";
  card.node.replaceChildren(el("h3", {}, card.file.name), el("div", { class: "images" }, thumbnail(card)),
    el("p", { class: "hint" }, "waiting for the service…"));
}

function renderError(card, problem) {
  card.node.dataset.state = "error";
  card.node.replaceChildren(el("h3", {}, card.file.name), el("div", { class: "images" }, thumbnail(card)),
    el("p", { class: "error", role: "alert" }, problem.message),
    el("p", { class: "hint detail" }, `The service said: ${problem.detail || "nothing"}`));
}

function flagLine(prediction, model) {
  const flag = prediction.in_distribution;
  if (flag === null || flag === undefined || !model || !model.ood) {
    return ["unknown", "No not-a-galaxy check: this model was exported without one."];
  }
  const [value, threshold] = [score(prediction.ood_score), score(model.ood.threshold)];
  const share = percent(model.ood.keep ?? 0.95);
  return flag
    ? ["galaxy", `Looks like a galaxy: its score ${value} passes the threshold ${threshold} that ${share} of validation galaxies pass.`]
    : ["not-galaxy", `Maybe not a galaxy: its score ${value} is below the threshold ${threshold} that ${share} ` +
        "of validation galaxies pass, so the class above may mean little."];
}

function bars(prediction) {
  const top = prediction.class_name;
  return el("ul", { class: "bars", "aria-label": "probability of each class" },
    Object.entries(prediction.probabilities).map(([name, p]) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${100 * p}%`;
      const track = el("span", { class: "track", "aria-hidden": "true" }, fill);
      if (name === top && prediction.spread !== undefined) {
        const whisker = el("span", { class: "whisker" });
        whisker.style.left = `${100 * Math.max(0, p - prediction.spread)}%`;
        whisker.style.width = `${100 * (Math.min(1, p + prediction.spread) - Math.max(0, p - prediction.spread))}%`;
        track.append(whisker);
      }
      return el("li", { class: name === top ? "bar top" : "bar", "data-class": name, "data-p": String(p) },
        el("span", { class: "name" }, name), track, el("span", { class: "value" }, percent(p)));
    }));
}

function renderPrediction(card, prediction, model) {
  const [flag, flagText] = flagLine(prediction, model);
  const node = card.node;
  node.dataset.state = "done";
  node.dataset.requestId = prediction.request_id;
  node.dataset.inDistribution = String(prediction.in_distribution);
  node.dataset.tta = String(prediction.tta);
  const spread = prediction.spread === undefined ? null
    : el("p", { class: "spread" }, `Spread over the 8 views: ±${prediction.spread.toFixed(3)} ` +
        "(standard deviation of the top class's probability; the bar's whisker)");
  node.replaceChildren(...[
    el("h3", {}, card.file.name),
    el("p", { class: "verdict" }, el("span", { class: "class-name" }, prediction.class_name), " ",
      el("span", { class: "confidence" }, `${percent(prediction.probabilities[prediction.class_name])}` +
        `${prediction.calibrated ? " calibrated" : ""} probability, model ${prediction.model}` +
        `${prediction.tta === 8 ? ", mean of 8 views" : ""}`)),
    el("p", { class: `flag ${flag}` }, flagText),
    el("div", { class: "images" }, thumbnail(card), el("div", { class: "attention-slot" })),
    bars(prediction), spread,
    el("div", { class: "actions" }, attentionControls(card), feedbackControls(card, prediction, model)),
    snippets(card, prediction)].filter(Boolean));
}

async function classifyAll() {
  const run = ++state.run; // a newer run (model, tta or key changed) makes this one stop
  const model = currentModel();
  if (!model) return;
  const todo = state.cards.filter((c) => !c.prediction || c.prediction.model !== model.name || c.prediction.tta !== tta());
  for (const [done, card] of todo.entries()) {
    if (run !== state.run) return;
    setStatus(`Classifying ${done + 1} of ${todo.length} with ${model.name}${tta() === 8 ? " (8 views)" : ""}…`);
    renderPending(card);
    const form = new FormData();
    form.append("images", card.file, card.file.name);
    form.append("model", model.name);
    if (tta() === 8) form.append("tta", "8");
    try {
      const answer = await (await call("classify", { method: "POST", body: form }, card.file.name)).json();
      if (run !== state.run) return;
      card.prediction = answer.predictions[0];
      renderPrediction(card, card.prediction, model);
    } catch (problem) {
      if (run !== state.run) return;
      card.prediction = null;
      renderError(card, problem);
    }
  }
  if (run === state.run && todo.length) {
    const failed = state.cards.filter((c) => c.node.dataset.state === "error").length;
    setStatus(`${state.cards.length - failed} of ${state.cards.length} images classified with ${model.name}` +
      `${tta() === 8 ? " (mean of 8 views)" : ""}.${failed ? ` ${failed} could not be classified.` : ""}`);
  }
}

// ---------------------------------------------------------------- attention map

function attentionControls(card) {
  return el("button", { type: "button", class: "explain-button", onclick: () => showAttention(card) }, "Show attention map");
}

/** The rollout (or signed map) as colours and opacities, as galaxyvit/overlay.py `colours` and `solid`. */
function mapColour(value, signed, opaque) {
  if (signed) {
    const hue = value >= 0 ? POSITIVE : NEGATIVE, strength = Math.abs(value);
    return opaque ? [hue.map((c) => (1 - strength) + strength * c), 1] : [hue, strength];
  }
  const ramp = [Math.min(1, Math.max(0, 3 * value)), Math.min(1, Math.max(0, 3 * value - 1)),
    Math.min(1, Math.max(0, 3 * value - 2))];
  return [ramp, opaque ? 1 : value];
}

/** The (g, g) map bilinearly upsampled to size x size (each patch's value at its centre), scaled to [0, 1]
 *  (rollout: min to max) or [-1, 1] (signed: by the largest |value|), as an RGBA layer. */
function mapLayer(grid, size, signed) {
  const g = grid.length, values = grid.flat();
  const low = Math.min(...values), high = Math.max(...values);
  const limit = Math.max(Math.abs(low), Math.abs(high)) || 1;
  const scale = (v) => (signed ? v / limit : high > low ? (v - low) / (high - low) : 0);
  const at = (i, j) => grid[Math.min(g - 1, Math.max(0, i))][Math.min(g - 1, Math.max(0, j))];
  const layer = new ImageData(size, size);
  for (let y = 0; y < size; y++) {
    const v = ((y + 0.5) * g) / size - 0.5, i = Math.floor(v), fy = v - i;
    for (let x = 0; x < size; x++) {
      const u = ((x + 0.5) * g) / size - 0.5, j = Math.floor(u), fx = u - j;
      const value = (1 - fy) * ((1 - fx) * at(i, j) + fx * at(i, j + 1)) + fy * ((1 - fx) * at(i + 1, j) + fx * at(i + 1, j + 1));
      const [colour, alpha] = mapColour(scale(value), signed, false);
      const k = 4 * (y * size + x);
      layer.data.set([255 * colour[0], 255 * colour[1], 255 * colour[2], 255 * alpha], k);
    }
  }
  return layer;
}

function colourBar(signed, grid) {
  const canvas = el("canvas", { width: 14, height: 160, class: "colour-bar", "aria-hidden": "true" });
  const ctx = canvas.getContext("2d");
  for (let y = 0; y < 160; y++) {
    const t = 1 - y / 159;
    const [colour] = mapColour(signed ? 2 * t - 1 : t, signed, true);
    ctx.fillStyle = `rgb(${colour.map((c) => Math.round(255 * c)).join(",")})`;
    ctx.fillRect(0, y, 14, 1);
  }
  const values = grid.flat();
  const limit = Math.max(...values.map(Math.abs));
  const [top, middle, bottom] = signed ? [`+${limit.toPrecision(2)}`, "0", `−${limit.toPrecision(2)}`]
    : [Math.max(...values).toPrecision(2), "", Math.min(...values).toPrecision(2)];
  const label = signed ? "colour bar: red positive, blue negative weights" : "colour bar: attention share, black lowest, yellow highest";
  return el("div", { class: "bar-legend", role: "img", "aria-label": `${label}, from ${bottom} to ${top}` }, canvas,
    el("div", { class: "ticks" }, el("span", {}, top), el("span", {}, middle), el("span", {}, bottom)));
}

/** The centre crop the model sees (zero padding around smaller images), in crop x crop pixels. */
async function cropCanvas(card, crop) {
  const image = await createImageBitmap(card.file);
  const canvas = el("canvas", { width: crop, height: crop });
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "black";
  ctx.fillRect(0, 0, crop, crop);
  ctx.drawImage(image, -Math.round((image.width - crop) / 2), -Math.round((image.height - crop) / 2));
  return canvas;
}

async function showAttention(card) {
  const model = currentModel(), slot = card.node.querySelector(".attention-slot");
  slot.replaceChildren(el("p", { class: "hint" }, "computing the attention map…"));
  const query = `model=${encodeURIComponent(model.name)}`;
  const options = { method: "POST", body: card.file, headers: { "Content-Type": card.file.type || "application/octet-stream" } };
  try {
    // the browser cannot read FITS (nor, often, TIFF): then the server's figure shows its crop and the map
    const crop = FITS.test(card.file.name) ? null : await cropCanvas(card, model.preprocessing.crop).catch(() => null);
    if (crop === null) {
      const png = await (await call(`explain?format=png&${query}`, options, card.file.name)).blob();
      card.node.querySelector(".thumb")?.remove(); // the figure shows the crop itself
      slot.replaceChildren(el("figure", { class: "attention server-figure" },
        el("img", { src: URL.createObjectURL(png), alt: `attention figure of ${card.file.name} drawn by the server` }),
        el("figcaption", {}, "drawn by the server: the crop it read from the file, the attention map and its colour bar")));
      return;
    }
    const answer = await (await call(`explain?format=json&${query}`, options, card.file.name)).json();
    const signed = answer.map_method !== "rollout";
    // the overview map (the rollout, or the Linformer's head mean), then each head of the last layer
    const maps = [answer.rollout, ...(answer.heads ?? [])];
    const names = [signed ? "head mean" : "rollout", ...(answer.heads ?? []).map((_, h) => `head ${h + 1}`)];
    const methods = [signed ? "last layer, head mean (signed)" : "attention rollout",
      ...(answer.heads ?? []).map((_, h) => `last layer, head ${h + 1}${signed ? " (signed)" : ""}`)];
    const layer = el("canvas", { width: crop.width, height: crop.height });
    const view = el("canvas", { width: crop.width, height: crop.height, class: "overlay",
      role: "img", "aria-label": `attention map of ${card.file.name} over the crop the model sees` });
    const draw = (opacity) => {
      const ctx = view.getContext("2d");
      ctx.globalAlpha = 1;
      ctx.drawImage(crop, 0, 0);
      ctx.globalAlpha = opacity;
      ctx.drawImage(layer, 0, 0);
    };
    const sliderId = `opacity-${card.id}`, mapId = `map-${card.id}`;
    const slider = el("input", { type: "range", id: sliderId, min: 0, max: 1, step: 0.05, value: DEFAULT_OPACITY,
      oninput: (event) => draw(Number(event.target.value)) });
    const row = el("div", { class: "map-row" }, view), caption = el("figcaption", {});
    const figure = el("figure", { class: "attention", "data-method": answer.map_method });
    const show = (k) => { // the chosen map, on the same colour scale as the rollout (signed for the Linformer)
      layer.getContext("2d").putImageData(mapLayer(maps[k], crop.width, signed), 0, 0);
      row.replaceChildren(view, colourBar(signed, maps[k]));
      figure.dataset.map = names[k];
      caption.textContent = `${methods[k]} over the centre crop the model sees, ${answer.grid}×${answer.grid} ` +
        `patches; the explain model says ${answer.class_name} (${percent(answer.probabilities[answer.class_name])})`;
      draw(Number(slider.value));
    };
    const choice = el("select", { id: mapId, onchange: (event) => show(Number(event.target.value)) },
      names.map((name, k) => el("option", { value: k }, name)));
    show(0);
    figure.append(row, caption,
      el("div", { class: "field map-choice" }, el("label", { for: mapId }, "Map"), choice),
      el("div", { class: "field slider" }, el("label", { for: sliderId }, "Map opacity"), slider));
    slot.replaceChildren(figure);
  } catch (problem) {
    slot.replaceChildren(el("p", { class: "error", role: "alert" }, problem.message),
      el("p", { class: "hint detail" }, `The service said: ${problem.detail}`));
  }
}

// ---------------------------------------------------------------- feedback and snippets

function feedbackControls(card, prediction, model) {
  const selectId = `label-${card.id}`;
  const select = el("select", { id: selectId },
    model.classes.map((name) => el("option", { value: name, selected: name === prediction.class_name }, name)));
  const result = el("span", { class: "feedback-status", role: "status" });
  const send = async () => {
    result.textContent = "sending…";
    try {
      const answer = await (await call("feedback", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ request_id: prediction.request_id, label: select.value }) })).json();
      const online = answer.online_accuracy;
      result.textContent = `Thank you: recorded as ${select.value} (${answer.correct ? "the model was right" : "the model was wrong"}). ` +
        `Accuracy of ${answer.model} from feedback: ${percent(online.accuracy)} of ${online.total}.`;
      result.dataset.sent = "true";
    } catch (problem) {
      result.textContent = `${problem.message} (${problem.detail})`;
    }
  };
  return el("div", { class: "feedback" }, el("label", { for: selectId }, "Right class"), select,
    el("button", { type: "button", class: "feedback-button", onclick: send }, "Send feedback"), result);
}

const shellQuote = (text) => `'${text.replaceAll("'", "'\\''")}'`;

function snippets(card, prediction) {
  const url = endpoint("classify"), name = card.file.name, key = Boolean(apiKey());
  const fields = [["model", prediction.model], ...(prediction.tta === 8 ? [["tta", "8"]] : [])];
  const curl = [
    ["curl", `-F ${shellQuote(`images=@${name}`)}`, ...fields.map(([k, v]) => `-F ${shellQuote(`${k}=${v}`)}`)].join(" "),
    ...(key ? ['  -H "Authorization: Bearer $GALAXYVIT_API_KEY"'] : []), `  ${shellQuote(url)}`].join(" \\\n");
  const data = `{${fields.map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(", ")}}`;
  const python = [
    ...(key ? ["import os", ""] : []), "import httpx", "",
    `with open(${JSON.stringify(name)}, "rb") as f:`,
    "    answer = httpx.post(",
    `        ${JSON.stringify(url)},`,
    `        files={"images": (${JSON.stringify(name)}, f)},`,
    `        data=${data},`,
    ...(key ? ['        headers={"Authorization": "Bearer " + os.environ["GALAXYVIT_API_KEY"]},'] : []),
    "        timeout=60,", "    )", "answer.raise_for_status()",
    'print(answer.json()["predictions"][0]["class_name"])'].join("\n");
  const block = (label, text) => {
    const code = el("pre", { class: label.toLowerCase() }, el("code", {}, text));
    const done = el("span", { class: "copied", role: "status" });
    const copy = async () => {
      try { await navigator.clipboard.writeText(text); done.textContent = "copied"; } catch {
        getSelection().selectAllChildren(code);
        done.textContent = "selected: press Ctrl+C to copy";
      }
    };
    return el("div", { class: "snippet" }, code,
      el("button", { type: "button", onclick: copy }, `Copy ${label}`), done);
  };
  return el("details", { class: "snippets" }, el("summary", {}, "Copy this request as curl / Python"),
    block("curl", curl), block("Python", python),
    key ? el("p", { class: "hint" }, "Set GALAXYVIT_API_KEY to your key first.") : null);
}

// ---------------------------------------------------------------- wiring

function init() {
  $("api-key").value = apiKey();
  $("key-status").textContent = apiKey() ? "key set for this tab" : "";
  $("key-save").addEventListener("click", () => useKey($("api-key").value.trim()));
  $("key-forget").addEventListener("click", () => { $("api-key").value = ""; useKey(""); });
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") useKey($("api-key").value.trim()); });
  $("model").addEventListener("change", () => { $("model-info").textContent = describeModel(currentModel()); classifyAll(); });
  $("tta").addEventListener("change", classifyAll);
  $("files").addEventListener("change", (e) => { addCards([...e.target.files]); e.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    addCards([...e.dataTransfer.files]);
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
