// The playground: a form built from GET /models and the request schema (/docs.json), a job
// per generation followed through its event stream, and a gallery kept in this browser
// (IndexedDB), never on the server. The API key lives in this tab's sessionStorage and only
// ever travels in the Authorization header.

const KEY_STORAGE = "imagegen-api-key";
const GALLERY_LIMIT = 100; // images kept; the oldest go first
const FIELDS = [
  "prompt", "negative_prompt", "model", "scheduler", "schedule", "clip_skip", "width", "height",
  "num_inference_steps", "guidance_scale", "seed", "num_images", "strength",
];
const HIRES = ["scale", "upscaler", "steps", "strength"]; // `hires.<name>` in the form
const NUMBERS = new Set([
  "clip_skip", "width", "height", "num_inference_steps", "guidance_scale", "seed", "num_images",
  "strength",
]);

const $ = (id) => document.getElementById(id);
const form = $("form");
const state = { job: null, lastSeed: null, models: [] };

// ---- the API ---------------------------------------------------------------------------

function headers(json) {
  const sent = json ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) sent.Authorization = `Bearer ${key}`;
  return sent;
}

async function api(method, path, body, signal) {
  return fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    const field = body.detail?.[0]?.loc?.[0] ?? (status === 401 ? "api_key" : null);
    // One control in the form: its errors, wherever in it, are shown beside it.
    this.field = String(field).startsWith("controlnets") ? "controlnets" : field;
  }
}

async function checked(response) {
  if (response.ok) return response;
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: the status alone says it
  }
  throw new ApiError(response.status, body);
}

// Server-Sent Events over fetch: EventSource cannot send the Authorization header.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { name, data: JSON.parse(data) };
    }
  }
}

// ---- the form --------------------------------------------------------------------------

function clearErrors() {
  for (const element of document.querySelectorAll(".error")) element.textContent = "";
  for (const element of form.querySelectorAll("[aria-invalid]")) {
    element.removeAttribute("aria-invalid");
  }
}

function showError(error, outcome = "Not generated") {
  const beside = error.field && $(`error-${error.field}`);
  if (beside) {
    beside.textContent = error.message;
    $(error.field).setAttribute("aria-invalid", "true");
    if (error.field === "image" || error.field === "mask" || error.field === "strength") {
      $("edit").open = true;
    }
    if (error.field === "loras") $("adapters").open = true;
    if (error.field === "controlnets") $("control").open = true;
    if (error.field.startsWith("hires")) $("hires-fix").open = true;
    setStatus(`${outcome}: see the field marked.`);
  } else {
    setStatus(error.message);
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data: URL, which the API accepts
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function requestBody() {
  const body = {};
  for (const name of FIELDS) {
    const element = $(name);
    if (element.disabled || element.value.trim() === "") continue;
    body[name] = NUMBERS.has(name) ? Number(element.value) : element.value;
  }
  if (!$("random_seed").checked && body.seed === undefined && state.lastSeed !== null) {
    body.seed = state.lastSeed;
  }
  for (const name of ["image", "mask"]) {
    const [file] = $(name).files;
    if (file) body[name] = await readFile(file);
  }
  if (!body.image) delete body.strength; // the API refuses a strength without an image
  const loras = [...$("loras").querySelectorAll("input[type=checkbox]:checked")].map((use) => ({
    name: use.value,
    scale: Number($(`lora-scale-${use.value}`).value),
  }));
  if (loras.length) body.loras = loras;
  const [control] = $("control.image").files;
  if (control && !$("control").hidden) {
    body.controlnets = [{
      name: $("controlnets").value,
      image: await readFile(control),
      module: $("control.module").value,
      scale: Number($("control.scale").value),
    }];
  }
  if ($("hires").checked) {
    body.hires = {};
    for (const name of HIRES) {
      const element = $(`hires.${name}`);
      if (element.value.trim() === "") continue;
      body.hires[name] = name === "upscaler" ? element.value : Number(element.value);
    }
  }
  return body;
}

function fill(parameters) {
  // A gallery image's parameters back into the form; the seed fixed to its own.
  for (const name of FIELDS) {
    if (!(name in parameters) || parameters[name] === null) continue;
    const element = $(name);
    if (name === "model") {
      const tag = parameters.model;
      const known = state.models.find((m) => `${m.name}:${m.version}` === tag);
      if (known) element.value = known.name;
    } else {
      element.value = parameters[name];
    }
  }
  applyModel();
  const used = new Map((parameters.loras ?? []).map((l) => [l.name.split(":")[0], l.scale]));
  for (const use of $("loras").querySelectorAll("input[type=checkbox]")) {
    use.checked = used.has(use.value);
    if (use.checked) $(`lora-scale-${use.value}`).value = used.get(use.value);
  }
  const hires = parameters.hires;
  $("hires").checked = Boolean(hires);
  if (hires) {
    $("hires.scale").value = +(hires.width / parameters.width).toFixed(2);
    $("hires.upscaler").value = hires.upscaler;
    $("hires.steps").value = hires.num_inference_steps;
    $("hires.strength").value = hires.strength;
  }
  $("random_seed").checked = false;
  $("seed").disabled = false;
  setStatus(`Parameters of seed ${parameters.seed} loaded.`);
}

// ---- what the server says it accepts ---------------------------------------------------

async function applySchema() {
  const spec = await (await fetch("/docs.json")).json();
  $("field-api_key").hidden = !spec.components?.securitySchemes;
  const properties = spec.components?.schemas?.JobRequest?.properties ?? {};
  for (const [name, property] of Object.entries(properties)) {
    const element = $(name);
    if (!element) continue;
    const bounds = property.anyOf ? property.anyOf.find((p) => p.type !== "null") : property;
    if (bounds?.minimum !== undefined) element.min = bounds.minimum;
    if (bounds?.exclusiveMinimum !== undefined) element.min = bounds.exclusiveMinimum;
    if (bounds?.maximum !== undefined) element.max = bounds.maximum;
    if (bounds?.maxLength !== undefined) element.maxLength = bounds.maxLength;
    if (property.description) element.title = property.description;
    if (property.default !== undefined && property.default !== null && element.type === "number") {
      element.placeholder = property.default;
    }
  }
}

function applyModel() {
  const info = state.models.find((m) => m.name === $("model").value) ?? state.models[0];
  if (!info) return;
  $("width").placeholder = info.native_width;
  $("height").placeholder = info.native_height;
  $("num_inference_steps").placeholder = info.default_steps;
  $("guidance_scale").placeholder = info.default_guidance_scale;
  const scheduler = $("scheduler");
  scheduler.replaceChildren(new Option(`model's default (${info.default_scheduler})`, ""));
  for (const name of info.schedulers) scheduler.append(new Option(name, name));
  $("edit").hidden = !info.modes?.includes("image-to-image");
  // What the model's family cannot take is off, so it is never sent (the API would refuse it).
  const negative = $("negative_prompt");
  negative.disabled = info.guidance !== "classifier-free";
  negative.placeholder = negative.disabled ? `${info.name} has no negative prompt` : "";
  $("guidance_scale").disabled = info.guidance === "none";
  $("clip_skip").disabled = info.family === "flux"; // its prompt is not read by CLIP alone
  $("loras").replaceChildren(...(info.loras ?? []).map(loraRow));
  $("adapters").hidden = !info.loras?.length;
  // The model's upscalers for hires fix; its latent ones first when it has them.
  const upscaler = $("hires.upscaler");
  const chosen = upscaler.value;
  const names = info.upscalers ?? [];
  upscaler.replaceChildren(...names.map((name) => new Option(name, name)));
  upscaler.value = names.includes(chosen) ? chosen : names.includes("Latent") ? "Latent" : names[0];
  $("hires-fix").hidden = !names.length;
  const nets = (info.controlnets ?? []).map((net) => net.name);
  $("controlnets").replaceChildren(...nets.map((name) => new Option(name, name)));
  $("control").hidden = !nets.length;
}

async function loadModules() {
  // The preprocessors, by the names `module` takes.
  const response = await checked(await api("GET", "/controlnet/module_list"));
  const { module_list: modules } = await response.json();
  $("control.module").replaceChildren(...modules.map((name) => new Option(name, name)));
}

async function previewControl() {
  // What the ControlNet will read: the chosen image through the chosen preprocessor, drawn
  // at the image's width (as a request draws it, pixel perfect for a square image).
  const [file] = $("control.image").files;
  const preview = $("control-preview");
  $("error-controlnets").textContent = "";
  if (!file) {
    preview.hidden = true;
    return;
  }
  const width = Number($("width").value || $("width").placeholder);
  try {
    const response = await checked(await api("POST", "/controlnet/detect", {
      controlnet_module: $("control.module").value,
      controlnet_input_images: [await readFile(file)],
      controlnet_processor_res: width,
    }));
    const [map] = (await response.json()).images;
    preview.src = `data:image/png;base64,${map}`;
    preview.hidden = false;
  } catch (error) {
    $("error-controlnets").textContent = error.message;
    preview.hidden = true;
  }
}

function loraRow(adapter) {
  // A checkbox to apply the adapter and its scale; the ids carry the adapter's name.
  const use = Object.assign(document.createElement("input"), {
    type: "checkbox", id: `lora-${adapter.name}`, value: adapter.name,
  });
  const label = Object.assign(document.createElement("label"), {
    htmlFor: use.id, textContent: adapter.name, title: adapter.source,
  });
  const scale = Object.assign(document.createElement("input"), {
    type: "number", id: `lora-scale-${adapter.name}`, min: -2, max: 2, step: 0.05, value: 1,
    inputMode: "decimal",
  });
  scale.setAttribute("aria-label", `Scale of ${adapter.name}`);
  const row = document.createElement("div");
  row.className = "lora";
  row.append(use, label, scale);
  return row;
}

async function loadModels() {
  try {
    const response = await checked(await api("GET", "/models"));
    state.models = await response.json();
  } catch (error) {
    showError(error, "No models listed");
    return;
  }
  $("error-api_key").textContent = "";
  $("api_key").removeAttribute("aria-invalid");
  $("model").replaceChildren(
    ...state.models.map((m) => new Option(`${m.name} (${m.version})`, m.name)),
  );
  applyModel();
  await loadModules();
  setStatus("Ready.");
}

// ---- a generation ----------------------------------------------------------------------

function setRunning(running) {
  $("generate").disabled = running;
  $("cancel").disabled = !running;
}

function showProgress(data) {
  const progress = $("progress");
  progress.value = data.fraction;
  progress.dataset.events = String(Number(progress.dataset.events || 0) + 1);
  const eta = data.eta_s == null ? "" : `, about ${data.eta_s.toFixed(1)} s left`;
  const pass = data.current_pass === 2 ? " (hires fix, second pass)" : "";
  setStatus(`Step ${data.step} of ${data.steps}${pass}${eta}.`);
  if (data.preview) {
    $("preview").src = `data:image/png;base64,${data.preview}`;
    $("preview").hidden = false;
  }
}

async function resultImages(jobId) {
  // One image: its PNG bytes; several: JSON with each base64 and its seed.
  const response = await checked(await api("GET", `/jobs/${jobId}/result`));
  const job = await (await checked(await api("GET", `/jobs/${jobId}`))).json();
  if (response.headers.get("content-type").startsWith("image/")) {
    return [{ blob: await response.blob(), parameters: job.parameters }];
  }
  const answer = await response.json();
  return Promise.all(
    answer.images.map(async (image) => ({
      blob: await (await fetch(`data:image/${image.format};base64,${image.data}`)).blob(),
      parameters: { ...answer.parameters, seed: image.seed },
    })),
  );
}

async function follow(jobId, signal) {
  const path = `/jobs/${jobId}/events?preview=true`;
  const stream = await checked(await api("GET", path, undefined, signal));
  for await (const { name, data } of events(stream)) {
    if (name === "queued") {
      setStatus(`Queued: ${data.queue_position} ahead.`);
    } else if (name === "progress") {
      showProgress(data);
    } else if (name === "succeeded") {
      return "succeeded";
    } else if (name === "cancelled") {
      return "cancelled";
    } else if (name === "failed" || name === "error") {
      // A refusal that names a field (a prompt too long) is shown beside it.
      throw Object.assign(new Error(data.error), { field: data.error_field ?? null });
    }
  }
  throw new Error("The event stream ended before the job did.");
}

async function generate() {
  if ($("generate").disabled) return; // one at a time, Ctrl+Enter included
  clearErrors();
  const progress = $("progress");
  progress.value = 0;
  progress.dataset.events = "0";
  $("preview").hidden = true;
  setRunning(true);
  const controller = new AbortController();
  try {
    const body = await requestBody();
    // Previews are made (and kept) only for a job that asks for them.
    const accepted = await (await checked(await api("POST", "/jobs", { ...body, preview: true }))).json();
    state.job = accepted.id;
    setStatus(`Queued: ${accepted.queue_position} ahead.`);
    const ended = await follow(accepted.id, controller.signal);
    if (ended === "cancelled") {
      setStatus("Cancelled.");
      return;
    }
    const made = await resultImages(accepted.id);
    progress.value = 1;
    showResults(made);
    for (const image of made) await keep(image);
    state.lastSeed = made[0].parameters.seed;
    $("reuse_seed").disabled = false;
    setStatus(`Done: ${made.length} image${made.length > 1 ? "s" : ""}, seed ${state.lastSeed}.`);
    await renderGallery();
  } catch (error) {
    showError(error);
  } finally {
    controller.abort();
    state.job = null;
    setRunning(false);
  }
}

async function cancel() {
  if (!state.job) return;
  setStatus("Cancelling…");
  try {
    await checked(await api("DELETE", `/jobs/${state.job}`));
  } catch (error) {
    showError(error); // 409: it had already ended
  }
}

function figure(item, onClick) {
  const url = URL.createObjectURL(item.blob);
  const p = item.parameters;
  const shown = document.createElement("figure");
  const image = document.createElement("img");
  image.src = url;
  image.alt = p.prompt;
  image.title = "Reuse these parameters";
  image.addEventListener("click", onClick);
  const caption = document.createElement("figcaption");
  const first = `${p.width}×${p.height}`;
  const size = p.hires ? `${p.hires.width}×${p.hires.height} (hires fix from ${first})` : first;
  caption.textContent = `${p.prompt} · seed ${p.seed} · ${size} · ${p.num_inference_steps} steps`;
  const download = document.createElement("a");
  download.href = url;
  download.download = `imagegen-${p.seed}.png`;
  download.textContent = "Download";
  shown.append(image, caption, download);
  return shown;
}

function show(container, items) {
  // A blob: URL holds its image until revoked: free those of the figures being replaced.
  for (const image of container.querySelectorAll("img")) URL.revokeObjectURL(image.src);
  container.replaceChildren(...items.map((item) => figure(item, () => fill(item.parameters))));
}

function showResults(made) {
  show($("results"), made);
  $("preview").hidden = true;
}

// ---- the gallery, in this browser ------------------------------------------------------

function database() {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open("imagegen-playground", 1);
    opening.onupgradeneeded = () =>
      opening.result.createObjectStore("images", { keyPath: "id", autoIncrement: true });
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
}

async function transaction(mode, work) {
  const db = await database();
  return new Promise((resolve, reject) => {
    const tx = db.transaction("images", mode);
    const result = work(tx.objectStore("images"));
    tx.oncomplete = () => resolve(result.result ?? result);
    tx.onerror = () => reject(tx.error);
  });
}

async function keep(item) {
  await transaction("readwrite", (store) => store.add({ ...item, created: Date.now() }));
  const keys = await transaction("readonly", (store) => store.getAllKeys());
  const over = keys.length - GALLERY_LIMIT;
  if (over > 0) {
    await transaction("readwrite", (store) => {
      for (const key of keys.slice(0, over)) store.delete(key);
      return {};
    });
  }
}

async function renderGallery() {
  const items = await transaction("readonly", (store) => store.getAll());
  show($("gallery"), items.reverse());
}

// ---- wiring ----------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    generate();
  }
});
$("cancel").addEventListener("click", cancel);
// Nobody will see a job whose page is gone: cancel it (keepalive outlives the page).
window.addEventListener("pagehide", () => {
  if (state.job) {
    fetch(`/jobs/${state.job}`, { method: "DELETE", headers: headers(false), keepalive: true });
  }
});
$("model").addEventListener("change", applyModel);
$("control.image").addEventListener("change", previewControl);
$("control.module").addEventListener("change", previewControl);
$("random_seed").addEventListener("change", () => {
  $("seed").disabled = $("random_seed").checked;
});
$("reuse_seed").addEventListener("click", () => {
  $("random_seed").checked = false;
  $("seed").disabled = false;
  $("seed").value = state.lastSeed;
});
$("api_key").value = sessionStorage.getItem(KEY_STORAGE) ?? "";
$("api_key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, $("api_key").value.trim());
  loadModels();
});
$("clear_gallery").addEventListener("click", async () => {
  await transaction("readwrite", (store) => store.clear());
  await renderGallery();
});

await applySchema();
await loadModels();
await renderGallery();
document.body.dataset.ready = "true";
