"use strict";
// Shared by both pages: the annotator's name, calls to the API, the status line.
// Model outputs and prompts are only ever put on the page with textContent: they are text, never HTML.
const annotate = (() => {
  const token = new URLSearchParams(location.search).get("token");
  if (token) sessionStorage.setItem("annotate.token", token);

  function headers() {
    const h = {"Content-Type": "application/json"};
    const saved = sessionStorage.getItem("annotate.token");
    if (saved) h["X-Token"] = saved;
    return h;
  }

  function describe(payload, status) {
    const detail = payload && payload.detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return detail || `the server answered ${status}`;
  }

  async function api(path, body) {
    const init = body === undefined ? {headers: headers()}
                                    : {method: "POST", headers: headers(), body: JSON.stringify(body)};
    const response = await fetch(path, init);
    let payload = null;
    try { payload = await response.json(); } catch (e) { /* an empty or non-JSON answer */ }
    if (!response.ok) throw new Error(describe(payload, response.status));
    return payload;
  }

  function status(text, kind) {
    const line = document.getElementById("status");
    line.textContent = text;
    line.className = kind || "";
  }

  // The name field: remembered in this browser; `onChange(name)` runs when it is set.
  function annotatorField(onChange) {
    const input = document.getElementById("annotator");
    input.value = localStorage.getItem("annotate.annotator") || "";
    input.addEventListener("change", () => {
      input.value = input.value.trim();
      localStorage.setItem("annotate.annotator", input.value);
      onChange();
    });
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") input.blur(); });
    return () => input.value.trim();
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(id, sections) {
    for (const section of sections) document.getElementById(section).hidden = section !== id;
  }

  const typing = (event) => event.target.matches && event.target.matches("input, textarea, select");

  return {api, status, annotatorField, element, show, typing};
})();
