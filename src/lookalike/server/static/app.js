// lookalike web page: query by words, by a picked, dropped or pasted photo or by a result, search one region,
// filter by a tag, browse, open an image's details, add and remove images. Everything the page shows is in its URL:
//   ?q=WORDS | ?id=ID | ?upload=KEY   the query: words, an indexed image, or a photo from this browser (IndexedDB)
//   &box=x0,y0,x1,y1       the searched region, in the query's original pixels
//   &label=  &tag=  &k=  &embedder=   search settings and filters (absent = the server's defaults)
//   &view=browse&page=N    the browse view and its page
//   &view=duplicates&tier=&threshold=   the duplicates view: which kind of duplicates, at which similarity
//   &detail=ID             an image's detail view, open over the page
// so Back, Forward and reload bring every state back.
"use strict";

const PAGE_SIZE = 48;
const MIN_BOX_PIXELS = 8; // smaller drags (in screen pixels) are taps, not regions
const KEY_STEP = 0.02; // an arrow key moves or resizes the region by this share of the image
const KEPT_UPLOADS = 20; // uploaded queries kept in this browser for Back/Forward/reload
const VIEWS = ["search", "browse", "duplicates"];
const TIERS = ["exact", "near", "similar"];
const DEFAULT_TIER = "near";
const SLIDER_DELAY_MS = 300; // the threshold slider regroups once it rests this long

const $ = (id) => document.getElementById(id);

// What the server told us at start.
const facts = {
  name: "",
  images: 0,
  labels: {},
  defaultEmbedder: "",
  defaultK: 12,
  maxK: 100,
  maxUploadBytes: null,
  readOnly: true,
};

// What the page currently shows (the URL says what it should show).
const shown = {
  queryKey: null, // "id:5", "upload:KEY" or "text:WORDS"
  query: null, // {kind: "id", id, name, src}, {kind: "upload", key, blob, name, src} or {kind: "text", text}
  querySerial: 0,
  searchKey: null,
  searchSerial: 0,
  browseKey: null,
  browseSerial: 0,
  browseBusy: false,
  pages: 1,
  draftBox: null, // a region being drawn, adjusted or moved with keys, not yet searched
  focusResults: false, // move focus to the new results (a result was activated)
  scrollToQuery: false, // bring the new query into view (a result was tapped further down)
  hits: new Map(), // id -> search hit, for the detail view's similarity
  scoreName: "Similarity", // what a hit's score is: a similarity, or a concept's probability (word queries)
  detailId: null,
  detail: null,
};

// --- small helpers ------------------------------------------------------------------------------

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// A short-lived message about something done (added, removed), whichever view is showing.
function tell(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.hidden = !text;
  message.classList.toggle("error", isError);
}

const plural = (count, word) => `${count.toLocaleString()} ${word}${count === 1 ? "" : "s"}`;
const megabytes = (bytes) => (bytes / 2 ** 20).toFixed(1);

function fileSize(bytes) {
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 2 ** 20) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${megabytes(bytes)} MB`;
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

// fetch, with a message a person can act on when the server cannot be reached.
async function request(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (_) {
    throw new Error("Cannot reach the lookalike server: is it still running? Reload the page once it is back.");
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

async function getJson(url) {
  return (await request(url)).json();
}

function clampK(value) {
  return Math.max(1, Math.min(facts.maxK, value));
}

// --- the URL is the state -----------------------------------------------------------------------

function positiveInt(text) {
  const value = Number.parseInt(text ?? "", 10);
  return Number.isFinite(value) && value > 0 ? value : null;
}

function parseBox(text) {
  if (!text) return null;
  const values = text.split(",").map(Number);
  if (values.length !== 4 || !values.every(Number.isFinite)) return null;
  const [x0, y0, x1, y1] = values;
  return x1 > x0 && y1 > y0 ? values : null;
}

function parseThreshold(text) {
  const value = Number.parseFloat(text ?? "");
  return Number.isFinite(value) && value > 0 && value <= 1 ? value : null;
}

function urlState() {
  const params = new URLSearchParams(location.search);
  return {
    id: positiveInt(params.get("id")),
    upload: params.get("upload"),
    q: (params.get("q") ?? "").trim(),
    box: parseBox(params.get("box")),
    label: params.get("label") ?? "",
    tag: params.get("tag") ?? "",
    k: clampK(positiveInt(params.get("k")) ?? facts.defaultK),
    embedder: params.get("embedder") ?? "",
    view: VIEWS.includes(params.get("view")) ? params.get("view") : "search",
    page: positiveInt(params.get("page")) ?? 1,
    tier: TIERS.includes(params.get("tier")) ? params.get("tier") : DEFAULT_TIER,
    threshold: parseThreshold(params.get("threshold")),
    detail: positiveInt(params.get("detail")),
  };
}

function urlWith(changes) {
  const params = new URLSearchParams(location.search);
  for (const [name, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "") params.delete(name);
    else params.set(name, String(value));
  }
  // Defaults stay out of the URL.
  if (params.get("k") === String(facts.defaultK)) params.delete("k");
  if (params.get("embedder") === facts.defaultEmbedder) params.delete("embedder");
  if (params.get("page") === "1") params.delete("page");
  if (!["browse", "duplicates"].includes(params.get("view"))) params.delete("view");
  if (params.get("tier") === DEFAULT_TIER) params.delete("tier");
  const query = params.toString().replace(/%2C/g, ",");
  return query ? `?${query}` : location.pathname;
}

// A new state: a new history entry (or the same one, replaced), then the page follows the URL.
function navigate(changes, { replace = false, entry = null } = {}) {
  tell("");
  const url = urlWith(changes);
  const same = url === `${location.pathname}${location.search}` || url === location.search;
  if (replace) history.replaceState(entry, "", url);
  else if (!same) history.pushState(entry, "", url);
  render();
}

function queryChanges(changes) {
  return { id: null, upload: null, q: null, box: null, tag: null, view: null, detail: null, ...changes };
}

// --- rendering the URL ------------------------------------------------------------------------------

function render() {
  const s = urlState();
  syncControls(s);
  showView(s.view);
  if (s.view === "browse") renderBrowse(s);
  else if (s.view === "duplicates") renderDuplicates(s);
  else renderSearch(s);
  renderDetail(s.detail);
}

function syncControls(s) {
  $("k").value = String(s.k);
  const label = $("label");
  if (s.label && ![...label.options].some((o) => o.value === s.label)) label.append(new Option(s.label, s.label));
  label.value = s.label;
  if (document.activeElement !== $("text-query")) $("text-query").value = s.q;
  $("tag-filter").hidden = !s.tag;
  $("tag-filter-name").textContent = s.tag;
  const embedder = $("embedder");
  embedder.value = s.embedder || facts.defaultEmbedder;
  $("tab-search").href = urlWith({ view: null, detail: null });
  $("tab-browse").href = urlWith({ view: "browse", detail: null });
  $("tab-duplicates").href = urlWith({ view: "duplicates", detail: null });
}

function showView(name) {
  $("search-view").hidden = name !== "search";
  $("browse-view").hidden = name !== "browse";
  $("duplicates-view").hidden = name !== "duplicates";
  $("controls").hidden = name === "duplicates"; // the search settings do not apply there
  for (const view of VIEWS) {
    const id = `tab-${view}`;
    const active = name === view;
    $(id).classList.toggle("active", active);
    if (active) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
}

// --- uploaded queries, kept in this browser -------------------------------------------------------

const uploads = {
  memory: new Map(), // key -> {blob, name}: this page's uploads
  db: null,

  open() {
    if (this.db) return this.db;
    this.db = new Promise((resolve, reject) => {
      const opening = indexedDB.open("lookalike", 1);
      opening.onupgradeneeded = () => {
        const store = opening.result.createObjectStore("uploads", { keyPath: "key" });
        store.createIndex("saved", "saved");
      };
      opening.onsuccess = () => resolve(opening.result);
      opening.onerror = () => reject(opening.error);
    });
    return this.db;
  },

  async put(key, blob, name) {
    this.memory.set(key, { blob, name });
    try {
      const db = await this.open();
      const store = db.transaction("uploads", "readwrite").objectStore("uploads");
      store.put({ key, blob, name, saved: Date.now() });
      // Keep only the newest few: older history entries then say the photo is no longer kept.
      let kept = 0;
      store.index("saved").openKeyCursor(null, "prev").onsuccess = (event) => {
        const cursor = event.target.result;
        if (!cursor) return;
        if (++kept > KEPT_UPLOADS) store.delete(cursor.primaryKey);
        cursor.continue();
      };
    } catch (_) {
      // no IndexedDB (a private window): the photo lasts as long as the page
    }
  },

  async get(key) {
    if (this.memory.has(key)) return this.memory.get(key);
    try {
      const db = await this.open();
      const found = await new Promise((resolve, reject) => {
        const reading = db.transaction("uploads").objectStore("uploads").get(key);
        reading.onsuccess = () => resolve(reading.result);
        reading.onerror = () => reject(reading.error);
      });
      if (found) this.memory.set(key, { blob: found.blob, name: found.name });
      return found ?? null;
    } catch (_) {
      return null;
    }
  },
};

function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

// --- the query ----------------------------------------------------------------------------------

async function loadQuery(s) {
  if (s.q && !s.id && !s.upload) return { kind: "text", text: s.q };
  if (s.id) {
    const image = await getJson(`/api/images/${s.id}`);
    return { kind: "id", id: image.id, name: image.name, src: image.image_url, image };
  }
  const kept = await uploads.get(s.upload);
  if (!kept) throw new Error("The photo searched here is no longer kept in this browser: choose it again.");
  return { kind: "upload", key: s.upload, blob: kept.blob, name: kept.name, src: URL.createObjectURL(kept.blob) };
}

function clearQuery() {
  if (shown.query?.kind === "upload") URL.revokeObjectURL(shown.query.src);
  shown.query = null;
  $("query").hidden = true;
  $("query-image").removeAttribute("src");
  $("drop-zone").classList.remove("compact");
}

function clearResults() {
  shown.searchKey = null;
  shown.searchSerial++;
  $("results").replaceChildren();
  $("weak-notice").hidden = true;
}

function showQuery(query) {
  $("query").hidden = false;
  $("query-frame").hidden = false;
  $("drop-zone").classList.add("compact");
  const image = $("query-image");
  image.src = query.src;
  image.alt = query.kind === "id" ? `query: ${query.name}` : `query: your photo ${query.name}`;
  $("query-caption").textContent = query.kind === "id" ? `${query.name} (id ${query.id})` : query.name;
  $("add-query").hidden = query.kind !== "upload" || facts.readOnly;
  drawSelection();
  if (shown.scrollToQuery) {
    shown.scrollToQuery = false;
    $("query").scrollIntoView({ block: "start" });
  }
}

async function renderSearch(s) {
  const queryKey = s.id ? `id:${s.id}` : s.upload ? `upload:${s.upload}` : s.q ? `text:${s.q}` : null;
  if (queryKey !== shown.queryKey) {
    shown.queryKey = queryKey;
    shown.draftBox = null;
    clearQuery();
    clearResults();
    const serial = ++shown.querySerial;
    if (!queryKey) {
      setStatus("");
      return;
    }
    setStatus("Loading the query…");
    let query;
    try {
      query = await loadQuery(s);
    } catch (error) {
      if (serial === shown.querySerial) setStatus(error.message, true);
      return;
    }
    if (serial !== shown.querySerial) return;
    shown.query = query;
    if (query.kind !== "text") showQuery(query);
  }
  drawSelection();
  $("clear-box").hidden = !urlState().box;
  runSearchIfNeeded();
}

function searchKey(s) {
  return JSON.stringify([shown.queryKey, s.box, s.k, s.label, s.tag, s.embedder]);
}

async function runSearchIfNeeded() {
  const s = urlState(); // the newest state, not the one the query started loading under
  if (s.view !== "search" || !shown.query) return;
  const key = searchKey(s);
  if (key === shown.searchKey) return;
  shown.searchKey = key;
  const serial = ++shown.searchSerial;
  const query = shown.query;
  const params = new URLSearchParams({ k: String(s.k) });
  if (s.embedder) params.set("embedder", s.embedder);
  if (s.label) params.set("label", s.label);
  if (s.tag) params.set("tag", s.tag);
  if (s.box && query.kind !== "text") params.set("box", s.box.map((v) => Math.round(v)).join(","));
  setStatus("Searching…");
  try {
    let response;
    if (query.kind === "text") {
      params.set("q", query.text);
      response = await request(`/api/search/text?${params}`);
    } else if (query.kind === "upload") {
      const form = new FormData();
      form.append("file", query.blob, query.name || "query");
      response = await request(`/api/search?${params}`, { method: "POST", body: form });
    } else {
      response = await request(`/api/images/${query.id}/similar?${params}`);
    }
    const body = await response.json();
    if (serial !== shown.searchSerial) return; // a newer search is under way
    if (query.kind === "text") showTextResults(body);
    else showResults(body);
  } catch (error) {
    if (serial !== shown.searchSerial) return;
    $("results").replaceChildren();
    $("weak-notice").hidden = true;
    setStatus(error.message, true);
    if (query.kind === "upload" && /not a readable image|too large/.test(error.message)) {
      $("query").hidden = true; // no broken picture, no region hint under it
    }
  }
}

// Who the results are, in the status line: their count, then the filters that narrowed them.
function filtersText(body) {
  const label = body.label ? ` labelled “${body.label}”` : "";
  const tag = urlState().tag ? ` tagged “${urlState().tag}”` : "";
  return `${label}${tag}`;
}

function focusNewResults() {
  if (!shown.focusResults) return;
  shown.focusResults = false;
  const first = $("results").querySelector(".card-main");
  if (first) first.focus({ preventScroll: true });
  else $("results-heading").focus({ preventScroll: true });
}

// Results of a word query: the same cards as an image search's, the score being how sure the network is.
function showTextResults(body) {
  shown.hits = new Map(body.results.map((hit) => [hit.id, hit]));
  shown.scoreName = body.method === "text-encoder" ? "Similarity" : "Concept score";
  $("results").replaceChildren(...body.results.map((hit) => card(hit, "text")));
  $("weak-notice").hidden = true;
  const classes = (count) => `${count.toLocaleString()} class${count === 1 ? "" : "es"}`;
  const read = body.terms.map((t) => `“${t.words}” → ${t.concepts.join(", ")} (${classes(t.classes)})`);
  const how = body.method === "text-encoder" ? `${body.embedder} text encoder` : `concepts of ${body.embedder}`;
  const left = body.ignored.length ? ` — left out: ${body.ignored.join("; ")}` : "";
  const count = body.results.length;
  const none = count ? "" : " — no image shows it";
  setStatus(
    `${plural(count, "result")}${filtersText(body)} for ${read.join(" and ") || `“${body.text}”`} (${how})` +
      `${left}${none}`,
  );
  focusNewResults();
}

function showResults(body) {
  shown.hits = new Map(body.results.map((hit) => [hit.id, hit]));
  shown.scoreName = "Similarity";
  const items = [];
  let dividerShown = false;
  for (const hit of body.results) {
    if (hit.weak && !dividerShown && !body.no_close_match && items.length) {
      const divider = document.createElement("li");
      divider.className = "divider";
      divider.textContent = `Weaker matches (similarity below ${body.weak_below.toFixed(2)})`;
      items.push(divider);
      dividerShown = true;
    }
    items.push(card(hit, "result"));
  }
  $("results").replaceChildren(...items);
  const notice = $("weak-notice");
  notice.hidden = !body.no_close_match;
  if (body.no_close_match) {
    const among = body.label ? ` labelled “${body.label}”` : "";
    const own = body.query.box ? "regions of the collection's own photos" : "the collection's own photos";
    notice.textContent =
      `No close match${among} in this collection: these are the nearest images, but none is really alike ` +
      `(every similarity is below ${body.weak_below.toFixed(2)}, a level nearly all ${own} reach ` +
      "with their nearest neighbour).";
  }
  const region = body.query.box ? " (region)" : "";
  const count = body.results.length;
  setStatus(
    `${plural(count, "result")}${region}${filtersText(body)} with ${body.embedder} in ${Math.round(body.took_ms)} ms`,
  );
  focusNewResults();
}

// A card of an image search's results ("result"), a word query's ("text") or a browse page ("browse"): the
// picture searches with it, the (i) button opens its details, its tags (results only) filter the results.
function card(item, kind) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = String(item.id);
  li.dataset.label = item.label ?? "";
  const labelText = item.label ? `labelled ${item.label}` : "no label";
  const scoreWord = kind === "text" ? "score" : "similarity";
  const scored = kind !== "browse";
  const score = scored ? `, ${scoreWord} ${item.score.toFixed(2)}${item.weak ? " (weak match)" : ""}` : "";
  if (item.weak) li.classList.add("weak");

  const main = document.createElement("button");
  main.type = "button";
  main.className = "card-main";
  main.setAttribute("aria-label", `Search with ${item.name} (${labelText}${score})`);
  const img = document.createElement("img");
  img.src = item.thumbnail_url;
  const size = item.width && item.height ? `, ${item.width}×${item.height} pixels` : "";
  img.alt = `${item.name}, ${labelText}${size}`;
  img.loading = "lazy";
  const meta = document.createElement("span");
  meta.className = "meta";
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = item.label ?? "";
  meta.append(label);
  if (scored) {
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = item.weak ? `weak ${item.score.toFixed(3)}` : item.score.toFixed(3);
    meta.append(value);
  }
  main.append(img, meta);
  main.addEventListener("click", () => searchWith(item));

  const info = document.createElement("button");
  info.type = "button";
  info.className = "card-info";
  info.textContent = "i";
  info.title = "Details";
  info.setAttribute("aria-label", `Details of ${item.name}`);
  info.addEventListener("click", () => openDetail(item.id));
  li.append(main, info);
  if (scored && item.tags?.length) li.append(tagList(item.tags));
  return li;
}

// An image's top concepts: each a button that keeps only the results tagged with it.
function tagList(tags) {
  const list = document.createElement("span");
  list.className = "tags";
  const active = urlState().tag;
  for (const tag of tags) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tag";
    button.textContent = tag.name;
    button.title = `${tag.name} (${Math.round(tag.score * 100)}%): show only images tagged with it`;
    const current = tag.name === active;
    button.setAttribute("aria-pressed", String(current));
    button.addEventListener("click", () => navigate({ tag: current ? null : tag.name, detail: null }));
    list.append(button);
  }
  return list;
}

function searchWith(item) {
  shown.focusResults = true;
  shown.scrollToQuery = true;
  navigate(queryChanges({ id: item.id }));
}

// --- getting a photo in: picker, drag and drop, paste ------------------------------------------------

function refuseFile(message) {
  navigate(queryChanges({})); // the previous query and its results go: the message is about this file
  setStatus(message, true);
}

function useFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    refuseFile(`${file.name} is not an image (${file.type})`);
    return;
  }
  if (facts.maxUploadBytes !== null && file.size > facts.maxUploadBytes) {
    refuseFile(
      `${file.name} is too large (${megabytes(file.size)} MB); the limit is ${megabytes(facts.maxUploadBytes)} MB`,
    );
    return;
  }
  const key = newKey();
  uploads.put(key, file, file.name || "pasted image");
  navigate(queryChanges({ upload: key }));
}

// An indexed photo's server-made JPEG (`/api/images/ID/preview`): the same size and upright, for a photo this
// browser cannot show.
function previewUrl(fileUrl) {
  return fileUrl.replace(/\/file(\?|$)/, "/preview$1");
}

function setupInputs() {
  $("file-input").addEventListener("change", (event) => {
    useFile(event.target.files[0]);
    event.target.value = ""; // picking the same file again still searches
  });
  const zone = $("drop-zone");
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
    // A HEIC photo may come without a media type where the system does not know the format: its name says.
    const file = [...(event.dataTransfer?.files ?? [])].find(
      (f) => f.type.startsWith("image/") || /\.(heic|heif|hif|avif)$/i.test(f.name),
    );
    if (file) useFile(file);
    else setStatus("Drop an image file", true);
  });
  document.addEventListener("paste", (event) => {
    if (event.target.closest?.("input, textarea")) return;
    const item = [...(event.clipboardData?.items ?? [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) {
      event.preventDefault();
      useFile(item.getAsFile());
    }
  });
  $("detail-image").addEventListener("error", () => {
    const src = $("detail-image").getAttribute("src");
    if (src && previewUrl(src) !== src) $("detail-image").src = previewUrl(src); // once: HEIC outside Safari
  });
  $("query-image").addEventListener("error", async () => {
    const image = $("query-image");
    if (!image.getAttribute("src")) return;
    // The browser cannot show it (not an image, or a format it does not display): no broken picture.
    $("query-frame").hidden = true;
    $("region-help").hidden = true;
    const query = shown.query;
    // A photo the server reads and this browser does not (HEIC outside Safari): the server's JPEG of it, the
    // same size and upright, so a region drawn on it is in the photo's own pixels.
    if (query?.kind === "id" && !query.previewed) {
      query.previewed = true;
      query.src = previewUrl(query.src);
      image.src = query.src;
      return;
    }
    if (query?.kind === "upload" && !query.previewed) {
      query.previewed = true;
      $("query-caption").textContent = `${query.name} (preparing a preview…)`;
      try {
        const form = new FormData();
        form.append("file", query.blob, query.name || "query");
        const preview = await (await request("/api/preview", { method: "POST", body: form })).blob();
        if (shown.query !== query) return;
        URL.revokeObjectURL(query.src);
        query.src = URL.createObjectURL(preview);
        $("query-caption").textContent = query.name;
        image.src = query.src;
        return;
      } catch (_) {
        if (shown.query !== query) return; // the server cannot read it either: the search says why
      }
    }
    $("query-caption").textContent = `${query?.name ?? "the photo"} (no preview)`;
  });
  $("query-image").addEventListener("load", () => {
    $("query-frame").hidden = false;
    $("region-help").hidden = false;
    drawSelection();
  });

  $("text-search").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text-query").value.trim();
    if (!text) return;
    navigate(queryChanges({ q: text }));
  });
  $("tag-filter-clear").addEventListener("click", () => navigate({ tag: null, detail: null }));

  $("k").addEventListener("change", () => {
    const typed = Number.parseInt($("k").value, 10);
    const k = Number.isFinite(typed) ? clampK(typed) : urlState().k;
    $("k").value = String(k); // the box shows what the search uses
    if (k !== urlState().k) navigate({ k, detail: null });
  });
  $("label").addEventListener("change", () => navigate({ label: $("label").value, page: null, detail: null }));
  $("embedder").addEventListener("change", () => navigate({ embedder: $("embedder").value, detail: null }));
  for (const [id, view] of [["tab-search", null], ["tab-browse", "browse"], ["tab-duplicates", "duplicates"]]) {
    $(id).addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return; // a new tab: let it
      event.preventDefault();
      if (urlState().view !== (view ?? "search")) navigate({ view, detail: null });
    });
  }
}

// --- the region: draw, adjust with handles, move, or use the keyboard -----------------------------

function currentBox() {
  return shown.draftBox ?? urlState().box;
}

function drawSelection() {
  const selection = $("selection");
  const image = $("query-image");
  const box = currentBox();
  $("clear-box").hidden = !urlState().box;
  if (!box || !image.naturalWidth || $("query").hidden) {
    selection.hidden = true;
    return;
  }
  const scale = image.clientWidth / image.naturalWidth;
  const [x0, y0, x1, y1] = box;
  Object.assign(selection.style, {
    left: `${x0 * scale}px`,
    top: `${y0 * scale}px`,
    width: `${(x1 - x0) * scale}px`,
    height: `${(y1 - y0) * scale}px`,
  });
  selection.hidden = false;
  selection.classList.toggle("draft", shown.draftBox !== null);
}

function searchRegion(box) {
  shown.draftBox = null;
  const rounded = box.map((v) => Math.round(v));
  navigate({ box: rounded.join(","), detail: null });
}

function describeRegion(box, pending) {
  const image = $("query-image");
  const [x0, y0, x1, y1] = box.map((v) => Math.round(v));
  const then = pending ? " Press Enter to search it, Esc to clear it." : "";
  $("region-status").textContent =
    `Region from ${x0}, ${y0} to ${x1}, ${y1} of ${image.naturalWidth} by ${image.naturalHeight} pixels.${then}`;
}

function clampBox(box, width, height) {
  let [x0, y0, x1, y1] = box;
  const w = Math.min(x1 - x0, width);
  const h = Math.min(y1 - y0, height);
  x0 = Math.min(Math.max(0, x0), width - w);
  y0 = Math.min(Math.max(0, y0), height - h);
  return [x0, y0, x0 + w, y0 + h];
}

function setupRegion() {
  const frame = $("query-frame");
  const image = $("query-image");
  let drag = null;

  // Displayed pixels -> original-image pixels (the page shows the image scaled down).
  const toImage = (event) => {
    const rect = image.getBoundingClientRect();
    const scale = image.naturalWidth / rect.width;
    const x = Math.min(Math.max(event.clientX - rect.left, 0), rect.width) * scale;
    const y = Math.min(Math.max(event.clientY - rect.top, 0), rect.height) * scale;
    return [x, y];
  };
  const boxFrom = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
  const bigEnough = (box) => {
    const scale = image.clientWidth / image.naturalWidth;
    return (box[2] - box[0]) * scale >= MIN_BOX_PIXELS && (box[3] - box[1]) * scale >= MIN_BOX_PIXELS;
  };

  const dragged = (point) => {
    if (drag.mode === "draw") return boxFrom(drag.start, point);
    const [dx, dy] = [point[0] - drag.start[0], point[1] - drag.start[1]];
    let [x0, y0, x1, y1] = drag.box;
    if (drag.mode === "move") return clampBox([x0 + dx, y0 + dy, x1 + dx, y1 + dy], image.naturalWidth, image.naturalHeight);
    if (drag.handle.includes("w")) x0 += dx;
    if (drag.handle.includes("e")) x1 += dx;
    if (drag.handle.includes("n")) y0 += dy;
    if (drag.handle.includes("s")) y1 += dy;
    return boxFrom([x0, y0], [x1, y1]);
  };

  frame.addEventListener("pointerdown", (event) => {
    if (!image.naturalWidth || event.button !== 0) return;
    const point = toImage(event);
    const box = currentBox();
    const handle = event.target.closest?.("[data-handle]")?.dataset.handle;
    if (box && handle) drag = { mode: "resize", handle, box: [...box], start: point };
    else if (box && event.target.closest?.("#selection")) drag = { mode: "move", box: [...box], start: point };
    else drag = { mode: "draw", start: point };
    frame.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  frame.addEventListener("pointermove", (event) => {
    if (!drag) return;
    shown.draftBox = dragged(toImage(event));
    drawSelection();
  });
  const finish = (event, cancelled) => {
    if (!drag) return;
    const box = dragged(toImage(event));
    const mode = drag.mode;
    drag = null;
    shown.draftBox = null;
    if (!cancelled && bigEnough(box)) searchRegion(box);
    else if (mode === "draw" && !cancelled) drawSelection(); // a tap: nothing to search
    else drawSelection();
  };
  frame.addEventListener("pointerup", (event) => finish(event, false));
  frame.addEventListener("pointercancel", (event) => finish(event, true));

  // The keyboard way: arrows place and move a region, Shift+arrows resize it, Enter searches, Esc clears.
  frame.addEventListener("keydown", (event) => {
    if (!image.naturalWidth) return;
    const width = image.naturalWidth;
    const height = image.naturalHeight;
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const box = currentBox();
    if (event.key in arrows) {
      event.preventDefault();
      const [dx, dy] = arrows[event.key].map((d, i) => d * Math.max(1, (i ? height : width) * KEY_STEP));
      let next;
      if (!box) next = [width * 0.25, height * 0.25, width * 0.75, height * 0.75];
      else if (event.shiftKey) {
        const minimum = (MIN_BOX_PIXELS * width) / image.clientWidth;
        next = [box[0], box[1], Math.max(box[0] + minimum, Math.min(width, box[2] + dx)), 0];
        next[3] = Math.max(box[1] + minimum, Math.min(height, box[3] + dy));
      } else next = clampBox([box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy], width, height);
      shown.draftBox = next;
      drawSelection();
      describeRegion(next, true);
    } else if (event.key === "Enter" && box) {
      event.preventDefault();
      searchRegion(box);
      describeRegion(box, false);
    } else if (event.key === "Escape" && box) {
      event.preventDefault();
      shown.draftBox = null;
      $("region-status").textContent = "Region cleared: the whole image is searched.";
      if (urlState().box) navigate({ box: null, detail: null });
      else drawSelection();
    }
  });

  $("clear-box").addEventListener("click", () => {
    shown.draftBox = null;
    navigate({ box: null, detail: null });
  });
  window.addEventListener("resize", drawSelection);
}

// --- browsing -------------------------------------------------------------------------------------

function setPagerBusy(busy) {
  shown.browseBusy = busy;
  if (busy) {
    $("page-prev").disabled = true;
    $("page-next").disabled = true;
  }
}

async function renderBrowse(s) {
  const key = JSON.stringify([s.page, s.label]);
  if (key === shown.browseKey) return;
  shown.browseKey = key;
  const serial = ++shown.browseSerial;
  setPagerBusy(true);
  const params = new URLSearchParams({ offset: String((s.page - 1) * PAGE_SIZE), limit: String(PAGE_SIZE) });
  if (s.label) params.set("label", s.label);
  let page;
  try {
    page = await getJson(`/api/images?${params}`);
  } catch (error) {
    if (serial !== shown.browseSerial) return;
    shown.browseKey = null;
    $("page-info").textContent = `Cannot list the images: ${error.message}`;
    $("page-info").classList.add("error");
    setPagerBusy(false);
    $("page-prev").disabled = s.page <= 1;
    $("page-next").disabled = false;
    return;
  }
  if (serial !== shown.browseSerial) return;
  const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
  shown.pages = pages;
  if (s.page > pages) {
    navigate({ page: pages }, { replace: true }); // past the end (the collection shrank, or an old link)
    return;
  }
  $("browse").replaceChildren(...page.items.map((item) => card(item, "browse")));
  const label = s.label ? ` labelled “${s.label}”` : "";
  $("page-info").classList.remove("error");
  $("page-info").textContent = `Page ${s.page} of ${pages} (${plural(page.total, "image")}${label})`;
  setPagerBusy(false);
  $("page-prev").disabled = s.page <= 1;
  $("page-next").disabled = s.page >= pages;
}

function setupBrowse() {
  $("page-prev").addEventListener("click", () => {
    const s = urlState();
    if (!shown.browseBusy && s.page > 1) navigate({ page: s.page - 1 });
  });
  $("page-next").addEventListener("click", () => {
    const s = urlState();
    if (!shown.browseBusy && s.page < shown.pages) navigate({ page: s.page + 1 });
  });
}

// --- duplicates: groups of copies, the keeper marked, keep / move / not-a-duplicate --------------------

const dups = {
  key: null, // the [tier, threshold] shown or being fetched
  serial: 0,
  body: null, // the last GET /api/duplicates answer
  keepers: new Map(), // group key -> the member chosen to keep, when not the suggested one
  timer: null,
};

const TIER_WORDS = { exact: "exact copies", near: "edited copies", similar: "similar shots" };

function showThreshold(value) {
  $("dups-threshold").value = String(value);
  $("dups-threshold-value").textContent = Number(value).toFixed(2);
}

async function renderDuplicates(s) {
  $("dups-tier").value = s.tier;
  if (s.threshold !== null) showThreshold(s.threshold);
  else if (dups.body?.thresholds) showThreshold(dups.body.thresholds[s.tier]);
  const key = JSON.stringify([s.tier, s.threshold]);
  if (key === dups.key) return;
  dups.key = key;
  const serial = ++dups.serial;
  const params = new URLSearchParams({ tier: s.tier });
  if (s.threshold !== null) params.set("threshold", String(s.threshold));
  const first = dups.body === null ? " (the first time, every photo is read once: this can take a while)" : "";
  $("dups-status").classList.remove("error");
  $("dups-status").textContent = `Looking for ${TIER_WORDS[s.tier]}…${first}`;
  $("dups-groups").setAttribute("aria-busy", "true");
  let body;
  try {
    body = await getJson(`/api/duplicates?${params}`);
  } catch (error) {
    if (serial !== dups.serial) return;
    dups.key = null;
    $("dups-groups").removeAttribute("aria-busy");
    $("dups-status").textContent = `Cannot list the duplicates: ${error.message}`;
    $("dups-status").classList.add("error");
    return;
  }
  if (serial !== dups.serial) return; // the slider moved on
  dups.body = body;
  $("dups-threshold").min = String(body.min_threshold);
  if (urlState().threshold === null) showThreshold(body.threshold);
  $("dups-groups").removeAttribute("aria-busy");
  $("dups-groups").replaceChildren(...body.groups.map(groupSection));
  describeDuplicates();
}

function describeDuplicates() {
  const body = dups.body;
  const images = body.groups.reduce((sum, group) => sum + group.members.length, 0);
  const parts = [
    `${plural(body.groups.length, "group")} of ${TIER_WORDS[body.tier]} (${plural(images, "image")}) ` +
      `at similarity ${body.threshold.toFixed(2)} or more`,
  ];
  if (body.resolved) parts.push(`${plural(body.resolved, "group")} resolved earlier not shown`);
  if (body.unreadable.length) {
    const names = body.unreadable.slice(0, 3).map((u) => u.path).join(", ");
    parts.push(`${plural(body.unreadable.length, "unreadable file")} left out (${names})`);
  }
  if (body.vanished) parts.push(`${plural(body.vanished, "indexed file")} no longer on disk left out`);
  $("dups-status").textContent = `${parts.join("; ")}.`;
}

function keeperOf(group) {
  return dups.keepers.get(group.key) ?? group.keeper;
}

function memberItem(group, member) {
  const keep = member.id === keeperOf(group);
  const li = document.createElement("li");
  li.className = `dup-member${keep ? " keeper" : ""}`;
  li.dataset.id = String(member.id);
  const img = document.createElement("img");
  img.src = member.thumbnail_url;
  img.loading = "lazy";
  const pixels = member.width && member.height ? `${member.width} × ${member.height} pixels` : "size unknown";
  img.alt = `${member.name}, ${pixels}${keep ? ", the one kept" : ""}`;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = member.name;
  const about = document.createElement("div");
  about.className = "facts";
  about.textContent = `${pixels} · ${fileSize(member.file_size)} · ${member.path}`;
  const score = document.createElement("div");
  score.className = "score";
  score.textContent =
    member.id === group.keeper ? "suggested keeper" : `similarity ${member.score.toFixed(3)} to the suggested keeper`;
  li.append(img, name, about, score);
  if (keep) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "Keeper";
    li.prepend(badge);
  } else if (!facts.readOnly) {
    const make = document.createElement("button");
    make.type = "button";
    make.className = "make-keeper secondary";
    make.textContent = "Keep this one instead";
    make.addEventListener("click", () => {
      if (member.id === group.keeper) dups.keepers.delete(group.key);
      else dups.keepers.set(group.key, member.id);
      const section = groupSection(group);
      $("dups-groups").querySelector(`[data-key="${CSS.escape(group.key)}"]`).replaceWith(section);
      section.querySelector(".keeper .badge").scrollIntoView({ block: "nearest" });
    });
    li.append(make);
  }
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open secondary";
  open.textContent = "Details";
  open.setAttribute("aria-label", `Details of ${member.name}`);
  open.addEventListener("click", () => openDetail(member.id));
  li.append(open);
  return li;
}

function groupSection(group) {
  const section = document.createElement("section");
  section.className = "dup-group";
  section.dataset.key = group.key;
  const keeper = group.members.find((m) => m.id === keeperOf(group));
  const heading = document.createElement("h3");
  const why = keeper.id === group.keeper ? group.reason : "chosen by you";
  heading.textContent = `${plural(group.members.length, "image")}: keep ${keeper.name} (${why})`;
  section.setAttribute("aria-label", heading.textContent);
  const list = document.createElement("ol");
  list.className = "dup-members";
  list.append(...group.members.map((member) => memberItem(group, member)));
  const status = document.createElement("p");
  status.className = "group-status";
  status.setAttribute("role", "status");
  section.append(heading, list);
  if (!facts.readOnly) section.append(groupActions(group, section, status));
  section.append(status);
  return section;
}

function groupActions(group, section, status) {
  const actions = document.createElement("div");
  actions.className = "actions";
  const button = (text, className, onClick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    b.addEventListener("click", onClick);
    actions.append(b);
    return b;
  };
  const others = group.members.length - 1;
  button("Keep as marked", "keep primary", () => decide(group, "keep", section, status));
  const move = button(`Move the ${others === 1 ? "other" : `other ${others}`}…`, "move secondary", () =>
    planMove(group, section, status, move),
  );
  button("Not duplicates", "distinct secondary", () => decide(group, "distinct", section, status));
  return actions;
}

async function postJson(url, data) {
  return request(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
}

function setBusy(section, busy) {
  for (const b of section.querySelectorAll("button")) b.disabled = busy;
}

// The group is handled: it leaves the page (and, being decided or moved, does not come back).
function groupDone(group, section, message) {
  dups.body.groups = dups.body.groups.filter((g) => g.key !== group.key);
  dups.keepers.delete(group.key);
  const next = section.nextElementSibling ?? section.previousElementSibling;
  section.remove();
  describeDuplicates();
  tell(message);
  (next?.querySelector("button.keep") ?? $("dups-status")).focus?.();
}

async function decide(group, decision, section, status) {
  const keeper = keeperOf(group);
  const ids = [keeper, ...group.members.map((m) => m.id).filter((id) => id !== keeper)];
  setBusy(section, true);
  try {
    await postJson("/api/duplicates/decisions", { ids, decision, keeper: decision === "keep" ? keeper : null });
  } catch (error) {
    setBusy(section, false);
    status.textContent = `Not saved: ${error.message}`;
    status.classList.add("error");
    return;
  }
  const name = group.members.find((m) => m.id === keeper).name;
  groupDone(
    group,
    section,
    decision === "keep"
      ? `Resolved: ${name} and its ${ids.length - 1 === 1 ? "copy" : `${ids.length - 1} copies`} stay as they are.`
      : `Marked as not duplicates: ${group.members.map((m) => m.name).join(", ")}.`,
  );
}

function moveRequest(group, dryRun) {
  const s = urlState();
  const choice = { key: group.key, keeper: keeperOf(group) };
  return postJson("/api/duplicates/move", { tier: s.tier, threshold: s.threshold, groups: [choice], dry_run: dryRun });
}

// Moving is shown first (a dry run: what goes where), then done on confirmation.
async function planMove(group, section, status, moveButton) {
  section.querySelector(".plan-box")?.remove();
  setBusy(section, true);
  let plan;
  try {
    plan = await (await moveRequest(group, true)).json();
  } catch (error) {
    setBusy(section, false);
    status.textContent = `Cannot move: ${error.message}`;
    status.classList.add("error");
    return;
  }
  setBusy(section, false);
  status.textContent = "";
  status.classList.remove("error");
  const box = document.createElement("div");
  box.className = "plan-box confirm";
  const title = document.createElement("p");
  title.textContent = plan.moves.length
    ? `Move ${plural(plan.moves.length, "file")} out of the collection (nothing is deleted; a record lets you undo it):`
    : "Nothing can be moved:";
  const list = document.createElement("ul");
  list.className = "plan";
  for (const move of plan.moves) {
    const li = document.createElement("li");
    li.textContent = `${move.source} → ${move.target}`;
    list.append(li);
  }
  for (const failed of plan.failed) {
    const li = document.createElement("li");
    li.className = "error";
    li.textContent = `${failed.path}: ${failed.reason}`;
    list.append(li);
  }
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "danger confirm-move";
  yes.textContent = `Move ${plural(plan.moves.length, "file")}`;
  yes.disabled = !plan.moves.length;
  const no = document.createElement("button");
  no.type = "button";
  no.className = "secondary";
  no.textContent = "Cancel";
  no.addEventListener("click", () => {
    box.remove();
    moveButton.focus();
  });
  yes.addEventListener("click", async () => {
    setBusy(section, true);
    let done;
    try {
      done = await (await moveRequest(group, false)).json();
    } catch (error) {
      setBusy(section, false);
      status.textContent = `Not moved: ${error.message}`;
      status.classList.add("error");
      return;
    }
    if (!done.moves.length) {
      setBusy(section, false);
      status.textContent = `Not moved: ${done.failed[0]?.reason ?? "nothing to move"}`;
      status.classList.add("error");
      return;
    }
    const first = done.failed[0];
    const failed = first ? `; ${plural(done.failed.length, "file")} not moved: ${first.path}: ${first.reason}` : "";
    const record = done.manifest ? ` (record of the move: ${done.manifest})` : "";
    const where = ` to ${done.moves[0].target.split("/")[0]}/`;
    shown.browseKey = null; // the moved files left the collection
    shown.searchKey = null;
    refreshCollection();
    groupDone(group, section, `Moved ${plural(done.moves.length, "file")}${where}${record}${failed}.`);
  });
  box.append(title, list, yes, no);
  section.querySelector(".actions").after(box);
  yes.focus();
}

function setupDuplicates() {
  $("dups-tier").addEventListener("change", () => navigate({ tier: $("dups-tier").value, threshold: null }));
  $("dups-threshold").addEventListener("input", () => {
    const value = Number.parseFloat($("dups-threshold").value);
    $("dups-threshold-value").textContent = value.toFixed(2);
    clearTimeout(dups.timer);
    dups.timer = setTimeout(() => navigate({ threshold: value.toFixed(2) }, { replace: true }), SLIDER_DELAY_MS);
  });
  $("dups-default").addEventListener("click", () => navigate({ threshold: null }));
  $("dups-settings").addEventListener("submit", (event) => event.preventDefault());
}

// --- an image's details ---------------------------------------------------------------------------

function openDetail(id) {
  navigate({ detail: id }, { entry: { detail: true } });
}

function closeDetail() {
  if (!urlState().detail) return;
  if (history.state?.detail) history.back(); // opened from this page: Back is what closing means
  else navigate({ detail: null }, { replace: true });
}

async function renderDetail(id) {
  const dialog = $("detail");
  if (!id) {
    shown.detailId = null;
    if (dialog.open) dialog.close();
    return;
  }
  if (shown.detailId === id && dialog.open) return;
  shown.detailId = id;
  shown.detail = null;
  $("detail-title").textContent = "Loading…";
  for (const part of ["detail-label", "detail-size", "detail-path", "detail-score", "detail-status"]) {
    $(part).textContent = "";
  }
  $("detail-image").removeAttribute("src");
  $("detail-confirm").hidden = true;
  $("detail-remove").hidden = true;
  if (!dialog.open) dialog.showModal();
  let image;
  try {
    image = await getJson(`/api/images/${id}`);
  } catch (error) {
    if (shown.detailId !== id) return;
    $("detail-title").textContent = "Not available";
    $("detail-status").textContent = error.message;
    return;
  }
  if (shown.detailId !== id) return;
  shown.detail = image;
  $("detail-title").textContent = image.name;
  $("detail-image").src = image.image_url;
  $("detail-image").alt = `${image.name}, ${image.label ? `labelled ${image.label}` : "no label"}`;
  $("detail-label").textContent = image.label ?? "none";
  const pixels = image.width && image.height ? `${image.width} × ${image.height} pixels, ` : "";
  $("detail-size").textContent = `${pixels}${fileSize(image.file_size)}`;
  $("detail-path").textContent = image.path;
  $("detail-original").href = image.image_url;
  const hit = shown.hits.get(id);
  for (const row of document.querySelectorAll(".score-row")) row.hidden = !hit || urlState().view !== "search";
  if (hit) $("detail-score").textContent = `${hit.score.toFixed(3)}${hit.weak ? " (a weak match)" : ""}`;
  $("detail-score-name").textContent = shown.scoreName;
  $("detail-remove").hidden = facts.readOnly;
}

async function removeShown() {
  const image = shown.detail;
  if (!image) return;
  $("detail-remove-yes").disabled = true;
  try {
    await request(`/api/images/${image.id}`, { method: "DELETE" });
  } catch (error) {
    $("detail-status").textContent = `Not removed: ${error.message}`;
    $("detail-remove-yes").disabled = false;
    return;
  }
  $("detail-remove-yes").disabled = false;
  for (const li of document.querySelectorAll(`.card[data-id="${image.id}"]`)) li.remove();
  shown.hits.delete(image.id);
  shown.browseKey = null; // the pages moved up by one
  const s = urlState();
  const changes = { detail: null };
  if (s.id === image.id) Object.assign(changes, queryChanges({}));
  navigate(changes, { replace: true });
  tell(`Removed ${image.name} from the collection.`);
  refreshCollection();
}

function setupDetail() {
  const dialog = $("detail");
  dialog.addEventListener("close", closeDetail);
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
  $("detail-close").addEventListener("click", () => dialog.close());
  $("detail-search").addEventListener("click", () => {
    const id = shown.detailId;
    if (!id) return;
    shown.focusResults = true;
    shown.scrollToQuery = true;
    // Replaces the detail entry: Back then returns to what was there before the detail opened.
    navigate(queryChanges({ id }), { replace: Boolean(history.state?.detail) });
  });
  $("detail-remove").addEventListener("click", () => {
    const image = shown.detail;
    if (!image) return;
    $("detail-confirm-text").textContent = image.uploaded
      ? `Remove ${image.name} from the collection? The copy stored in uploads/ is deleted.`
      : `Remove ${image.name} from the collection? The file itself stays where it is (${image.path}); ` +
        "indexing its folder again adds it back.";
    $("detail-confirm").hidden = false;
    $("detail-remove-no").focus();
  });
  $("detail-remove-no").addEventListener("click", () => {
    $("detail-confirm").hidden = true;
    $("detail-remove").focus();
  });
  $("detail-remove-yes").addEventListener("click", removeShown);
}

// --- adding photos ---------------------------------------------------------------------------------

async function addFile(file, label) {
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  const params = label ? `?${new URLSearchParams({ label })}` : "";
  return (await request(`/api/images${params}`, { method: "POST", body: form })).json();
}

function setupAdding() {
  const dialog = $("add-dialog");
  $("add-open").addEventListener("click", () => {
    $("add-progress").replaceChildren();
    $("add-label").value = urlState().label;
    dialog.showModal();
  });
  $("add-close").addEventListener("click", () => dialog.close());
  $("add-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = [...$("add-files").files];
    const label = $("add-label").value.trim();
    const progress = $("add-progress");
    progress.replaceChildren();
    $("add-submit").disabled = true;
    let added = 0;
    for (const file of files) {
      const line = document.createElement("li");
      line.textContent = `${file.name}: adding…`;
      progress.append(line);
      if (facts.maxUploadBytes !== null && file.size > facts.maxUploadBytes) {
        line.textContent = `${file.name}: not added, larger than the limit of ${megabytes(facts.maxUploadBytes)} MB`;
        line.className = "error";
        continue;
      }
      try {
        const image = await addFile(file, label);
        line.textContent = `${file.name}: added as ${image.name} (id ${image.id})`;
        added++;
      } catch (error) {
        line.textContent = `${file.name}: not added: ${error.message}`;
        line.className = "error";
      }
    }
    $("add-submit").disabled = false;
    $("add-files").value = "";
    if (added) {
      tell(`Added ${plural(added, "photo")} to the collection.`);
      shown.browseKey = null;
      shown.searchKey = null; // the new photos may be results now
      refreshCollection();
      render();
    }
  });
  $("add-query").addEventListener("click", async () => {
    const query = shown.query;
    if (query?.kind !== "upload") return;
    $("add-query").disabled = true;
    try {
      const image = await addFile(new File([query.blob], query.name, { type: query.blob.type }), urlState().label);
      tell(`Added ${query.name} to the collection as ${image.name} (id ${image.id}).`);
      shown.browseKey = null;
      refreshCollection();
    } catch (error) {
      tell(`Not added: ${error.message}`, true);
    } finally {
      $("add-query").disabled = false;
    }
  });
}

// --- the collection's facts ----------------------------------------------------------------------

function showCollectionFacts(stats) {
  facts.name = stats.name;
  facts.images = stats.images;
  facts.labels = stats.labels;
  const readOnly = facts.readOnly ? " (read-only)" : "";
  $("collection-info").textContent = `${stats.name}: ${plural(stats.images, "image")}${readOnly}`;
  const select = $("label");
  const current = select.value;
  select.replaceChildren(new Option("any", ""));
  const names = $("label-names");
  names.replaceChildren();
  for (const [name, count] of Object.entries(stats.labels)) {
    if (!name) continue;
    select.append(new Option(`${name} (${count.toLocaleString()})`, name));
    names.append(new Option(name));
  }
  if (current && ![...select.options].some((o) => o.value === current)) select.append(new Option(current, current));
  select.value = current;
}

async function refreshCollection() {
  try {
    showCollectionFacts(await getJson("/api/stats"));
  } catch (_) {
    // the status line already says what went wrong
  }
}

async function loadCollection() {
  const [stats, embedders, limits] = await Promise.all([
    getJson("/api/stats"),
    getJson("/api/embedders"),
    getJson("/api/limits"),
  ]);
  facts.maxUploadBytes = limits.max_upload_bytes;
  facts.maxK = limits.max_k;
  facts.defaultK = limits.default_k;
  facts.readOnly = limits.read_only;
  facts.defaultEmbedder = embedders.default;
  $("k").max = String(limits.max_k);
  $("add-open").hidden = facts.readOnly;
  const select = $("embedder");
  select.replaceChildren();
  for (const embedder of embedders.embedders.filter((e) => e.ready)) {
    select.append(new Option(`${embedder.name} (${embedder.vectors.toLocaleString()})`, embedder.name));
  }
  showCollectionFacts(stats);
}

// --- start ----------------------------------------------------------------------------------------

setupInputs();
setupRegion();
setupBrowse();
setupDetail();
setupAdding();
setupDuplicates();
window.addEventListener("popstate", () => {
  $("text-query").value = urlState().q; // Back and Forward bring the words back even while the box has focus
  render();
});
loadCollection().then(render, (error) => setStatus(`Cannot load the collection: ${error.message}`, true));
