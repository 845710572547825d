// lookalike web page: query by dropped/picked/pasted image or by a result, draw a region, browse.
"use strict";

const PAGE_SIZE = 48;
const MIN_BOX_PIXELS = 8; // smaller drags are clicks, not regions

const $ = (id) => document.getElementById(id);

const state = {
  query: null, // {kind: "upload", file} or {kind: "id", id, name}
  box: null, // [x0, y0, x1, y1] in original-image pixels
  queryUrl: null, // object URL of an uploaded query, revoked when replaced
  browseOffset: 0,
  searchSerial: 0, // only the newest search may draw its results
  maxUploadBytes: null, // from /api/limits: a too-large file is refused before it is sent
};

// --- small helpers --------------------------------------------------------------------------

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

function searchParams() {
  const params = new URLSearchParams();
  const maxK = parseInt($("k").max, 10) || 100;
  const k = Math.max(1, Math.min(maxK, parseInt($("k").value, 10) || 12));
  params.set("k", String(k));
  if ($("embedder").value) params.set("embedder", $("embedder").value);
  if ($("label").value) params.set("label", $("label").value);
  if (state.box) params.set("box", state.box.map((v) => Math.round(v)).join(","));
  return params;
}

function card(item, onClick, scoreText) {
  const li = document.createElement("li");
  li.className = "card";
  li.tabIndex = 0;
  li.dataset.id = String(item.id);
  li.dataset.label = item.label ?? "";
  li.title = `${item.name} (id ${item.id})`;
  const img = document.createElement("img");
  img.src = item.thumbnail_url;
  img.alt = item.name;
  img.loading = "lazy";
  const meta = document.createElement("div");
  meta.className = "meta";
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = item.label ?? "";
  meta.append(label);
  if (scoreText !== undefined) {
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = scoreText;
    meta.append(score);
  }
  li.append(img, meta);
  li.addEventListener("click", () => onClick(item));
  li.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      onClick(item);
    }
  });
  return li;
}

// --- loading the collection's facts -----------------------------------------------------------

async function loadCollection() {
  try {
    const [stats, embedders, limits] = await Promise.all([
      getJson("/api/stats"),
      getJson("/api/embedders"),
      getJson("/api/limits"),
    ]);
    state.maxUploadBytes = limits.max_upload_bytes;
    $("k").max = String(limits.max_k);
    $("collection-info").textContent = `${stats.name}: ${stats.images.toLocaleString()} images`;
    const select = $("embedder");
    select.replaceChildren();
    for (const embedder of embedders.embedders.filter((e) => e.ready)) {
      const option = new Option(`${embedder.name} (${embedder.vectors.toLocaleString()})`, embedder.name);
      option.selected = embedder.default;
      select.append(option);
    }
    const labels = $("label");
    for (const [name, count] of Object.entries(stats.labels)) {
      if (name) labels.append(new Option(`${name} (${count.toLocaleString()})`, name));
    }
  } catch (error) {
    setStatus(`Cannot load the collection: ${error.message}`, true);
  }
}

// --- the query ----------------------------------------------------------------------------------

function showQuery(src, caption) {
  $("query").hidden = false;
  $("query-image").src = src;
  $("query-caption").textContent = caption;
  drawSelection();
}

function useFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") {
    setStatus(`${file.name} is not an image (${file.type})`, true);
    return;
  }
  if (state.maxUploadBytes !== null && file.size > state.maxUploadBytes) {
    const mb = (bytes) => (bytes / 2 ** 20).toFixed(1);
    setStatus(`${file.name} is too large (${mb(file.size)} MB); the limit is ${mb(state.maxUploadBytes)} MB`, true);
    return;
  }
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = URL.createObjectURL(file);
  state.query = { kind: "upload", file };
  state.box = null;
  showQuery(state.queryUrl, file.name || "pasted image");
  search();
}

function useIndexed(item) {
  state.query = { kind: "id", id: item.id, name: item.name };
  state.box = null;
  showView("search");
  showQuery(item.image_url, `${item.name} (id ${item.id})`);
  search();
}

async function search() {
  if (!state.query) return;
  const serial = ++state.searchSerial;
  const params = searchParams();
  setStatus("Searching…");
  try {
    let response;
    if (state.query.kind === "upload") {
      const form = new FormData();
      form.append("file", state.query.file, state.query.file.name || "query");
      response = await fetch(`/api/search?${params}`, { method: "POST", body: form });
    } else {
      response = await fetch(`/api/images/${state.query.id}/similar?${params}`);
    }
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    if (serial !== state.searchSerial) return; // a newer search is under way
    showResults(body);
  } catch (error) {
    if (serial !== state.searchSerial) return;
    $("results").replaceChildren();
    setStatus(error.message, true);
  }
}

function showResults(body) {
  const list = $("results");
  list.replaceChildren(...body.results.map((hit) => card(hit, useIndexed, hit.score.toFixed(3))));
  const region = body.query.box ? " (region)" : "";
  const count = body.results.length;
  setStatus(`${count} result${count === 1 ? "" : "s"}${region} with ${body.embedder} in ${Math.round(body.took_ms)} ms`);
}

// --- drawing a region on the query --------------------------------------------------------------

function drawSelection() {
  const selection = $("selection");
  const image = $("query-image");
  $("clear-box").hidden = !state.box;
  if (!state.box || !image.naturalWidth) {
    selection.hidden = true;
    return;
  }
  const scale = image.clientWidth / image.naturalWidth;
  const [x0, y0, x1, y1] = state.box;
  Object.assign(selection.style, {
    left: `${x0 * scale}px`,
    top: `${y0 * scale}px`,
    width: `${(x1 - x0) * scale}px`,
    height: `${(y1 - y0) * scale}px`,
  });
  selection.hidden = false;
}

function setupRegionDrawing() {
  const frame = $("query-frame");
  const image = $("query-image");
  let start = null;

  // Displayed pixels -> original-image pixels (the page may show the image scaled down).
  const toImage = (event) => {
    const rect = image.getBoundingClientRect();
    const scale = image.naturalWidth / rect.width;
    const x = Math.min(Math.max(event.clientX - rect.left, 0), rect.width) * scale;
    const y = Math.min(Math.max(event.clientY - rect.top, 0), rect.height) * scale;
    return [x, y];
  };
  const boxFrom = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];

  frame.addEventListener("pointerdown", (event) => {
    if (!image.naturalWidth || event.button !== 0) return;
    start = toImage(event);
    frame.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  frame.addEventListener("pointermove", (event) => {
    if (!start) return;
    state.box = boxFrom(start, toImage(event));
    drawSelection();
  });
  frame.addEventListener("pointerup", (event) => {
    if (!start) return;
    const box = boxFrom(start, toImage(event));
    start = null;
    const scale = image.clientWidth / image.naturalWidth;
    const big = (box[2] - box[0]) * scale >= MIN_BOX_PIXELS && (box[3] - box[1]) * scale >= MIN_BOX_PIXELS;
    state.box = big ? box : null;
    drawSelection();
    if (big) search();
  });
  $("clear-box").addEventListener("click", () => {
    state.box = null;
    drawSelection();
    search();
  });
  image.addEventListener("load", drawSelection);
  window.addEventListener("resize", drawSelection);
}

// --- getting an image in: picker, drag and drop, paste ------------------------------------------

function setupInputs() {
  $("file-input").addEventListener("change", (event) => {
    useFile(event.target.files[0]);
    event.target.value = ""; // picking the same file again still searches
  });
  const zone = $("drop-zone");
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file-input").click();
  });
  // Dropping anywhere works; the zone only highlights.
  window.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) zone.classList.remove("dragging");
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = [...(event.dataTransfer?.files ?? [])].find((f) => f.type.startsWith("image/"));
    if (file) useFile(file);
    else setStatus("Drop an image file", true);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items ?? [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) {
      event.preventDefault();
      useFile(item.getAsFile());
    }
  });
  for (const id of ["embedder", "k", "label"]) $(id).addEventListener("change", search);
}

// --- browsing -----------------------------------------------------------------------------------

async function loadBrowsePage() {
  const params = new URLSearchParams({ offset: String(state.browseOffset), limit: String(PAGE_SIZE) });
  if ($("label").value) params.set("label", $("label").value);
  try {
    const page = await getJson(`/api/images?${params}`);
    $("browse").replaceChildren(...page.items.map((item) => card(item, useIndexed)));
    const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
    const current = Math.floor(page.offset / PAGE_SIZE) + 1;
    $("page-info").textContent = `Page ${current} of ${pages} (${page.total.toLocaleString()} images)`;
    $("page-prev").disabled = page.offset === 0;
    $("page-next").disabled = page.offset + PAGE_SIZE >= page.total;
  } catch (error) {
    $("page-info").textContent = `Cannot list images: ${error.message}`;
  }
}

function showView(name) {
  const browsing = name === "browse";
  $("search-view").hidden = browsing;
  $("browse-view").hidden = !browsing;
  $("tab-search").classList.toggle("active", !browsing);
  $("tab-browse").classList.toggle("active", browsing);
  $("tab-search").setAttribute("aria-pressed", String(!browsing));
  $("tab-browse").setAttribute("aria-pressed", String(browsing));
  if (browsing) loadBrowsePage();
}

function setupBrowse() {
  $("tab-search").addEventListener("click", () => showView("search"));
  $("tab-browse").addEventListener("click", () => showView("browse"));
  $("page-prev").addEventListener("click", () => {
    state.browseOffset = Math.max(0, state.browseOffset - PAGE_SIZE);
    loadBrowsePage();
  });
  $("page-next").addEventListener("click", () => {
    state.browseOffset += PAGE_SIZE;
    loadBrowsePage();
  });
  $("label").addEventListener("change", () => {
    state.browseOffset = 0;
    if (!$("browse-view").hidden) loadBrowsePage();
  });
}

setupInputs();
setupRegionDrawing();
setupBrowse();
loadCollection();
