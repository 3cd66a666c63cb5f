"use strict";
// imagegen's page. It calls the native API (/v1/...) with the key of the key field as `Authorization: Bearer`:
// never in a URL, so the progress stream is read with fetch() rather than EventSource, which cannot send headers.
// Every text that comes from a job is written with textContent, never as markup: prompts are users' input.

const KEY_STORAGE = "imagegen.apiKey";
const PAGE_SIZE = 20;
const NUMBER_FIELDS = ["width", "height", "num_inference_steps", "guidance_scale", "seed", "num_images"];
const DEFAULT_FIELDS = ["width", "height", "num_inference_steps", "guidance_scale"];  // recipe defaults as placeholders
// A1111's infotext grammar (modules/infotext_utils.py re_param, as imagegen/outputs/metadata.py reads it).
const INFOTEXT_PARAM = /\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
const LORA_TAG = /<lora:([^<>]+)>/g;

const $ = (id) => document.getElementById(id);
const form = $("generate-form");
let recipes = new Map();  // name -> {summary, defaults}
let galleryUrls = [];  // blob: URLs of the gallery, revoked when it is drawn again
let resultUrls = [];
let following = null;  // the job whose events are being read: {id, abort}

class ApiError extends Error {
  constructor(status, detail) {
    super(status === 401 ? "This server needs an API key: enter it above." : `${detail} (HTTP ${status})`);
    this.status = status;
  }
}

// The server's {"detail": text}, or FastAPI's list of {loc, msg} for a malformed request, as one sentence.
function detailText(detail, fallback) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((item) => `${(item.loc ?? []).join(".")}: ${item.msg}`).join("; ");
  return fallback;
}

async function api(path, options = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  const headers = {...options.headers, ...(key ? {Authorization: `Bearer ${key}`} : {})};
  let response;
  try {
    response = await fetch(path, {...options, headers});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error("The server does not answer: is imagegen serve still running?");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = detailText((await response.json()).detail, detail);
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, detail);
  }
  return response;
}

// One status line: progress and results as plain text, errors styled as errors (never an alert or raw JSON).
function setStatus(text, {error = false} = {}) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function showError(error) {
  setStatus(error.message, {error: true});
}

// The live preview: a blob: URL (the page's policy allows no data: images), replaced as new ones arrive.
function showPreview(base64) {
  const bytes = Uint8Array.from(atob(base64), (character) => character.charCodeAt(0));
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(new Blob([bytes], {type: "image/jpeg"}));
  preview.hidden = false;
}

function hidePreview() {
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
}

function setProgress(done, total) {
  $("progress").max = Math.max(total, 1);
  $("progress").value = Math.min(done, Math.max(total, 1));
}

// Server-sent events from a fetch() response: "event: NAME" and "data: JSON" lines, a blank line after each
// event (the server writes "\n" line ends only).
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      let name = "message";
      const data = [];
      for (const line of buffer.slice(0, end).split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      buffer = buffer.slice(end + 2);
      if (data.length) yield {name, data: JSON.parse(data.join("\n"))};
    }
  }
}

async function follow(jobId) {
  following?.abort.abort();
  const current = {id: jobId, abort: new AbortController()};
  following = current;
  $("cancel").hidden = false;
  hidePreview();
  try {
    const response = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {signal: current.abort.signal});
    for await (const {name, data} of serverEvents(response)) {
      if (name === "queued") {
        setProgress(0, 1);
        setStatus(data.position ? `Queued: ${data.position} job(s) ahead` : "Queued: next to run");
      } else if (name === "progress" && !data.total) {  // running, before its first step: the model loads
        $("progress").removeAttribute("value");  // an indeterminate bar
        setStatus("Starting");
      } else if (name === "progress") {
        setProgress(data.done, data.total);
        setStatus(`Step ${data.done} of ${data.total}`);
      } else if (name === "preview") {
        showPreview(data.jpeg);
      } else if (name === "done") {
        setProgress(1, 1);
        setStatus("Done");
        resultUrls = await showImages($("result"), data.images, resultUrls);
      } else if (name === "failed") {
        setStatus(`Failed: ${data.error}`, {error: true});
      } else if (name === "cancelled") {
        setStatus("Cancelled");
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(error);
  } finally {
    if (following === current) {
      hidePreview();  // the result (or the reason there is none) replaces it
      following = null;
      $("cancel").hidden = true;
    }
  }
  await loadGallery(0);
}

// Images are fetched with the key and shown from blob: URLs (an <img src> cannot send the Authorization header).
async function mediaElement(image) {
  const blob = await (await api(image.url)).blob();
  const url = URL.createObjectURL(blob);
  const video = blob.type.startsWith("video/");
  const media = document.createElement(video ? "video" : "img");
  media.src = url;
  if (video) {
    media.controls = true;
    media.loop = true;
  } else {
    media.alt = parseInfotext(image.infotext).prompt || "generated image";
  }
  const link = document.createElement("a");
  link.href = url;
  link.download = image.url.split("/").pop();
  link.title = "Download";
  link.append(media);
  return {link, url};
}

// Replaces the container's images; returns the new blob: URLs after revoking `previous`.
async function showImages(container, images, previous) {
  previous.forEach((url) => URL.revokeObjectURL(url));
  container.replaceChildren();
  const urls = [];
  for (const image of images) {
    try {
      const {link, url} = await mediaElement(image);
      urls.push(url);
      container.append(link);
    } catch (error) {
      const note = document.createElement("p");
      note.className = "error";
      note.textContent = `Image not available: ${error.message}`;
      container.append(note);
    }
  }
  return urls;
}

function parseInfotext(text) {
  const lines = text.trim().split("\n");
  const params = {};
  const pairs = [...lines[lines.length - 1].matchAll(INFOTEXT_PARAM)];
  if (pairs.length >= 3) {  // A1111 reads a last line of fewer pairs as more prompt
    lines.pop();
    for (const [, key, value] of pairs) params[key] = unquote(value);
  }
  const prompt = [];
  const negative = [];
  let current = prompt;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith("Negative prompt:")) {
      current = negative;
      line = line.slice("Negative prompt:".length).trim();
    }
    current.push(line);
  }
  return {prompt: prompt.join("\n").trim(), negative_prompt: negative.join("\n").trim(), params};
}

function unquote(value) {
  if (!value.startsWith('"')) return value;
  try {
    return JSON.parse(value);
  } catch {
    return value;
  }
}

// The form's values that re-create a job: from its image's infotext when it has one, else what the job shows.
function settingsOf(job) {
  if (!job.images.length) return {prompt: job.prompt, recipe: job.recipe, seed: job.seed};
  const {prompt, negative_prompt: negativePrompt, params} = parseInfotext(job.images[0].infotext);
  const loras = [...prompt.matchAll(LORA_TAG)].map((match) => match[1]);
  const [width, height] = (params.Size ?? "").split("x");
  return {
    prompt: loras.length ? prompt.replace(LORA_TAG, " ").replace(/[ \t]{2,}/g, " ").trim() : prompt,
    negative_prompt: negativePrompt,
    recipe: params.Recipe ?? job.recipe,
    width, height,
    num_inference_steps: params.Steps,
    guidance_scale: params["CFG scale"],
    seed: params.Seed ?? job.seed,
    num_images: job.images.length,
    loras: loras.join(", "),
    fast: (params.Fast ?? "").split(",").filter(Boolean),
  };
}

function fillForm(settings) {
  for (const name of ["prompt", "negative_prompt", "loras", ...NUMBER_FIELDS]) {
    form.elements[name].value = settings[name] ?? (name === "num_images" ? "1" : "");
  }
  if (recipes.has(settings.recipe)) {
    form.elements.recipe.value = settings.recipe;
    showRecipeDefaults();
    showFastMethods(recipes.get(settings.recipe).fast ?? {}, settings.fast ?? []);
  }
  setStatus("Settings copied into the form");
  form.elements.prompt.focus();
}

function galleryItem(job) {
  const item = document.createElement("li");
  item.className = "job";
  const images = document.createElement("div");
  images.className = "images";
  showImages(images, job.images, []).then((urls) => galleryUrls.push(...urls));
  const state = document.createElement("p");
  state.className = job.state === "failed" ? "state error" : "state";
  state.textContent = `${job.recipe} · ${job.state}${job.error ? `: ${job.error}` : ""}`;
  const infotext = document.createElement("pre");
  infotext.className = "infotext";
  infotext.textContent = job.images.length ? job.images[0].infotext : `${job.prompt}\nSeed: ${job.seed}`;
  infotext.id = `infotext-${job.id}`;
  const reuse = document.createElement("button");
  reuse.type = "button";
  reuse.textContent = "Reuse these settings";
  reuse.setAttribute("aria-describedby", infotext.id);  // the parameters it reuses, for screen readers
  reuse.addEventListener("click", () => fillForm(settingsOf(job)));
  item.append(images, state, infotext, reuse);
  return item;
}

async function loadGallery(offset) {
  try {
    const {jobs} = await (await api(`/v1/jobs?offset=${offset}&limit=${PAGE_SIZE}`)).json();
    const list = $("gallery");
    if (offset === 0) {
      galleryUrls.forEach((url) => URL.revokeObjectURL(url));
      galleryUrls = [];
      list.replaceChildren();
    }
    list.append(...jobs.map(galleryItem));
    $("older").hidden = jobs.length < PAGE_SIZE;
    $("older").dataset.offset = String(offset + jobs.length);
  } catch (error) {
    showError(error);
  }
}

function showRecipeDefaults() {
  const recipe = recipes.get(form.elements.recipe.value);
  if (!recipe) return;
  for (const name of DEFAULT_FIELDS) form.elements[name].placeholder = recipe.defaults[name] ?? "";
  $("recipe-summary").textContent = `${recipe.summary}. Empty fields take the recipe's defaults.`;
  showFastMethods(recipe.fast ?? {});
}

// One checkbox per `fast` method the recipe takes (the server's /v1/recipes says which), ticks kept across recipes.
function showFastMethods(methods, ticked = checkedFastMethods()) {
  const fieldset = $("fast");
  const boxes = Object.entries(methods).map(([name, help]) => {
    const label = document.createElement("label");
    label.className = "check";
    label.title = help;
    const box = document.createElement("input");
    Object.assign(box, {type: "checkbox", name: "fast", value: name, checked: ticked.includes(name)});
    label.append(box, ` ${name}`);
    return label;
  });
  fieldset.replaceChildren(fieldset.querySelector("legend"), ...boxes);
  fieldset.hidden = !boxes.length;
}

function checkedFastMethods() {
  return [...$("fast").querySelectorAll("input:checked")].map((box) => box.value);
}

async function loadRecipes() {
  try {
    const list = await (await api("/v1/recipes")).json();
    recipes = new Map(list.map((recipe) => [recipe.name, recipe]));
    const select = form.elements.recipe;
    const chosen = select.value;
    // Recipes whose files are not on the server stay selectable: the first job downloads them (when online).
    select.replaceChildren(...list.map((recipe) =>
      new Option(recipe.ready === false ? `${recipe.name} (not downloaded)` : recipe.name, recipe.name)));
    // The server lists its default recipe first (or marks it "default").
    select.value = recipes.has(chosen) ? chosen : (list.find((recipe) => recipe.default) ?? list[0]).name;
    showRecipeDefaults();
    setStatus("");
    return true;
  } catch (error) {
    showError(error);
    return false;
  }
}

function requestBody() {
  const body = {prompt: form.elements.prompt.value, recipe: form.elements.recipe.value};
  if (form.elements.negative_prompt.value) body.negative_prompt = form.elements.negative_prompt.value;
  for (const name of NUMBER_FIELDS) {
    if (form.elements[name].value !== "") body[name] = Number(form.elements[name].value);
  }
  const loras = form.elements.loras.value.split(",").map((lora) => lora.trim()).filter(Boolean);
  if (loras.length) body.loras = loras;
  const fast = checkedFastMethods();
  if (fast.length) body.fast = fast.join(",");
  return body;
}

async function generate(event) {
  event.preventDefault();
  setProgress(0, 1);
  resultUrls = await showImages($("result"), [], resultUrls);
  try {
    const response = await api("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify(requestBody())});
    const job = await response.json();
    setStatus("Submitted");
    await loadGallery(0);
    await follow(job.id);
  } catch (error) {
    showError(error);
  }
}

async function start() {
  $("api-key").value = localStorage.getItem(KEY_STORAGE) ?? "";
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    if (await loadRecipes()) await loadGallery(0);
  });
  form.addEventListener("submit", generate);
  form.elements.recipe.addEventListener("change", showRecipeDefaults);
  $("cancel").addEventListener("click", () => {
    if (following) api(`/v1/jobs/${encodeURIComponent(following.id)}`, {method: "DELETE"}).catch(showError);
  });
  $("older").addEventListener("click", () => loadGallery(Number($("older").dataset.offset)));
  if (await loadRecipes()) await loadGallery(0);
}

start();
