// Access token for a server reachable from other machines (lookalike serve --host ...).
// Self-contained: loaded before app.js, it adds the token to every fetch() and asks for it when
// the server answers 401. Images shown by URL (<img src>) send it as a same-site cookie, which the
// server accepts for reading only. Kept for this tab only (sessionStorage, a session cookie).
"use strict";

(() => {
  const KEY = "lookalike-token";
  const plainFetch = window.fetch.bind(window);
  let asking = null; // one prompt for the requests that fail together

  function remember(token) {
    sessionStorage.setItem(KEY, token);
    document.cookie = `lookalike_token=${encodeURIComponent(token)}; path=/api/; SameSite=Strict`;
  }

  function askForToken() {
    if (!asking) {
      asking = new Promise((resolve) => {
        const token = (window.prompt("This lookalike server needs its access token:") || "").trim();
        if (token) remember(token);
        resolve(Boolean(token));
      }).finally(() => setTimeout(() => { asking = null; }, 0));
    }
    return asking;
  }

  function send(input, init) {
    const token = sessionStorage.getItem(KEY);
    if (!token) return plainFetch(input, init);
    const headers = new Headers((init && init.headers) || undefined);
    headers.set("Authorization", `Bearer ${token}`);
    return plainFetch(input, { ...init, headers });
  }

  const saved = sessionStorage.getItem(KEY);
  if (saved) remember(saved);

  window.fetch = async (input, init = {}) => {
    const response = await send(input, init);
    if (response.status !== 401 || !(await askForToken())) return response;
    return send(input, init);
  };
})();
