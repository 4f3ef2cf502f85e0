"use strict";
// The red-team page: write a prompt, see the policy's responses, flag each with a category (and a note),
// optionally write a better response.
(() => {
  const {api, status, annotatorField, element, show} = annotate;
  const SECTIONS = ["name", "write", "flag"];
  const list = document.getElementById("responses");
  const ask = document.getElementById("ask");
  const save = document.getElementById("save");
  let categories = [];
  let item = null;
  const annotator = annotatorField(start);

  async function start() {
    if (!annotator()) { show("name", SECTIONS); return; }
    try {
      const config = await api("api/config");
      categories = config.categories;
      if (!config.redteam) { status("This server has no policy to red team.", "error"); return; }
      const pending = await api(`api/redteam/pending?annotator=${encodeURIComponent(annotator())}`);
      if (pending.item) showItem(pending.item); else showWrite();
    } catch (error) {
      status(error.message, "error");
    }
  }

  function showWrite() {
    item = null;
    show("write", SECTIONS);
    document.getElementById("new-prompt").focus();
  }

  function showItem(next) {
    item = next;
    document.getElementById("prompt").textContent = item.prompt;
    document.getElementById("item-number").textContent = `item ${item.id}`;
    document.getElementById("flag").dataset.item = item.id;
    document.getElementById("better").value = "";
    document.getElementById("note").value = "";
    list.replaceChildren(...item.responses.map((response, i) => {
      const li = element("li", "card flag-card");
      li.dataset.id = response.id;
      const flags = element("fieldset", "flags");
      flags.setAttribute("aria-label", `flag response ${String.fromCharCode(65 + i)}`);
      for (const category of categories) {
        const choice = element("label");
        const radio = element("input");
        radio.type = "radio";
        radio.name = `flag-${response.id}`;
        radio.value = category;
        choice.append(radio, ` ${category}`);
        flags.append(choice);
      }
      const remark = element("input", "flag-note");
      remark.type = "text";
      remark.maxLength = 2000;
      remark.placeholder = "what is wrong with it (optional)";
      li.append(element("div", "label", String.fromCharCode(65 + i)),
                response.text ? element("div", "text", response.text) : element("div", "text empty", "(empty response)"),
                flags, remark);
      return li;
    }));
    show("flag", SECTIONS);
  }

  async function askModel() {
    const prompt = document.getElementById("new-prompt").value;
    if (!prompt.trim()) { status("Write a prompt first.", "error"); return; }
    ask.disabled = true;
    status("Sampling the policy's responses...", "");
    try {
      const answer = await api("api/redteam/prompt", {annotator: annotator(), prompt});
      document.getElementById("new-prompt").value = "";
      status("", "");
      showItem(answer.item);
    } catch (error) {
      status(error.message, "error");
    } finally {
      ask.disabled = false;
    }
  }

  async function saveFlags() {
    const flags = {};
    for (const li of list.children) {
      const chosen = li.querySelector("input[type=radio]:checked");
      if (!chosen) { status("Flag every response (\"fine\" when nothing is wrong).", "error"); return; }
      flags[li.dataset.id] = {category: chosen.value, note: li.querySelector(".flag-note").value};
    }
    save.disabled = true;
    const judged = item.id;
    try {
      await api("api/redteam", {annotator: annotator(), item_id: judged, flags,
                                better: document.getElementById("better").value,
                                note: document.getElementById("note").value});
      status(`Saved: red-team item ${judged}.`, "saved");
      showWrite();
    } catch (error) {
      status(`Not saved: ${error.message}`, "error");
    } finally {
      save.disabled = false;
    }
  }

  ask.addEventListener("click", askModel);
  save.addEventListener("click", saveFlags);
  document.getElementById("new-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); askModel(); }
  });

  start();
})();
