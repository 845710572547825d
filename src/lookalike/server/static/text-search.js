// Search by words (GET /api/search/text): a text box above the image query, results in the same grid.
// Self-contained: it reads the shared settings (results, embedder, label) when the page has them.
"use strict";

(function () {
  const byId = (id) => document.getElementById(id);

  function status(text, isError) {
    const element = byId("status");
    if (!element) return;
    element.textContent = text;
    element.classList.toggle("error", Boolean(isError));
  }

  function params(text) {
    const query = new URLSearchParams({ q: text });
    const k = byId("k") && parseInt(byId("k").value, 10);
    if (k > 0) query.set("k", String(Math.min(k, parseInt(byId("k").max, 10) || 100)));
    for (const name of ["embedder", "label"]) {
      if (byId(name) && byId(name).value) query.set(name, byId(name).value);
    }
    return query;
  }

  function textCard(hit) {
    const li = document.createElement("li");
    li.className = "card";
    li.tabIndex = 0;
    li.dataset.id = String(hit.id);
    const tags = hit.tags.map((t) => `${t.name} ${t.score.toFixed(2)}`).join(", ");
    li.title = `${hit.name} (id ${hit.id})${tags ? ` — ${tags}` : ""}`;
    const img = document.createElement("img");
    img.src = hit.thumbnail_url;
    img.alt = hit.name;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = hit.label ?? "";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    meta.append(label, score);
    const tagLine = document.createElement("div");
    tagLine.className = "tags";
    tagLine.textContent = hit.tags.map((t) => t.name).join(", ");
    li.dataset.label = hit.label ?? "";
    li.append(img, meta, tagLine);
    // Clicking a result searches by that image, when the page's image search is there.
    const open = () => typeof useIndexed === "function" && useIndexed(hit); // eslint-disable-line no-undef
    li.addEventListener("click", open);
    li.addEventListener("keydown", (event) => event.key === "Enter" && open());
    return li;
  }

  async function searchText(event) {
    event.preventDefault();
    const text = byId("text-query").value.trim();
    if (!text) return;
    status("Searching…");
    try {
      const response = await fetch(`/api/search/text?${params(text)}`);
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : `${response.status}`);
      byId("results").replaceChildren(...body.results.map(textCard));
      const read = body.terms.map((t) => `“${t.words}” → ${t.concepts.join(", ")} (${t.classes} classes)`);
      const count = body.results.length;
      const left = body.ignored && body.ignored.length ? ` — left out: ${body.ignored.join("; ")}` : "";
      status(`${count} result${count === 1 ? "" : "s"} for ${read.join(" and ") || `“${body.text}”`}` +
        ` (${body.method === "text-encoder" ? body.embedder + " text encoder" : "concepts of " + body.embedder})` +
        left);
    } catch (error) {
      byId("results").replaceChildren();
      status(error.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = byId("text-search");
    if (form) form.addEventListener("submit", searchText);
  });
})();
