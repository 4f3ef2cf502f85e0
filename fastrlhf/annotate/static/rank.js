"use strict";
// The ranking page: order the responses best first (drag, or keys), tie neighbours, submit; the next
// item loads without reloading the page.
(() => {
  const {api, status, annotatorField, element, show, typing} = annotate;
  const SECTIONS = ["name", "waiting", "task"];
  const list = document.getElementById("responses");
  const note = document.getElementById("note");
  const buttons = ["submit", "all-bad", "skip"].map((id) => document.getElementById(id));
  let item = null;   // {id, prompt, responses: [{id, text}]}, as the server sent it
  let cards = [];    // [{id, label, text, tiedNext}], best first; tiedNext: tied with the card below
  let selected = 0;
  let busy = false;
  let poll = null;
  const annotator = annotatorField(load);

  function label(i) { return i < 26 ? String.fromCharCode(65 + i) : `#${i + 1}`; }

  async function load() {
    clearTimeout(poll);
    if (!annotator()) {
      show("name", SECTIONS);
      document.getElementById("annotator").focus();
      return;
    }
    let answer;
    try {
      answer = await api(`api/next?annotator=${encodeURIComponent(annotator())}`);
    } catch (error) {
      status(error.message, "error");
      return;
    }
    const {done, items} = answer.progress;
    const {remaining, error, external} = answer.sampling;
    document.getElementById("progress").textContent =
      `${done} judged of ${items} items` + (remaining ? ` · ${remaining} prompts being sampled` : "");
    item = answer.item;
    if (item) {
      cards = item.responses.map((r, i) => ({id: r.id, label: label(i), text: r.text, tiedNext: false}));
      selected = 0;
      note.value = "";
      document.getElementById("prompt").textContent = item.prompt;
      document.getElementById("item-number").textContent = `item ${item.id}`;
      document.getElementById("task").dataset.item = item.id;
      show("task", SECTIONS);
      render();
      return;
    }
    document.getElementById("waiting-text").textContent =
      error ? `Sampling stopped: ${error}` :
      remaining ? `Sampling responses: ${remaining} prompts left. The next item appears by itself.` :
      external ? "Nothing to rank right now. New items appear here by themselves." :
      "All done: there is nothing left for you to rank. Thank you!";
    show("waiting", SECTIONS);
    // Items added by another program (the iterate loop's next round) are looked for every few seconds.
    if ((remaining || external) && !error) poll = setTimeout(load, remaining ? 1000 : 5000);
  }

  // Tie groups, best first: a card starts a new group unless the card above is tied with it.
  function groups() {
    const out = [];
    cards.forEach((card, i) => {
      if (i === 0 || !cards[i - 1].tiedNext) out.push([]);
      out[out.length - 1].push(card);
    });
    return out;
  }

  function render() {
    const rows = [];
    let better = 0;
    for (const group of groups()) {
      for (const card of group) rows.push([card, better + 1, group.length > 1]);
      better += group.length;
    }
    list.replaceChildren(...rows.map(([card, rank, tied], i) => cardElement(card, rank, tied, i)));
    const current = list.children[selected];
    const active = document.activeElement;
    if (current && !(active && typing({target: active}))) current.focus();
  }

  function cardElement(card, rank, tied, i) {
    const li = element("li", "card" + (i === selected ? " selected" : ""));
    li.tabIndex = 0;
    li.dataset.id = card.id;
    const handle = element("div", "handle", "⠿");
    handle.title = "drag to reorder";
    handle.addEventListener("pointerdown", (event) => drag(event, li, i));
    li.append(handle, element("div", "rank", tied ? `${rank}=` : String(rank)), element("div", "label", card.label),
              card.text ? element("div", "text", card.text) : element("div", "text empty", "(empty response)"));
    if (i < cards.length - 1) {
      const tie = element("button", "tie", card.tiedNext ? "tied with the next" : "tie with the next");
      tie.type = "button";
      tie.setAttribute("aria-pressed", String(card.tiedNext));
      tie.addEventListener("click", () => toggleTie(i));
      li.append(tie);
    }
    li.addEventListener("focus", () => select(i));
    li.addEventListener("mousedown", () => select(i));
    return li;
  }

  function select(i) {
    selected = Math.max(0, Math.min(cards.length - 1, i));
    [...list.children].forEach((li, j) => li.classList.toggle("selected", j === selected));
  }

  // Moves a card; the ties it had, and the one it lands inside, are undone.
  function move(from, to) {
    to = Math.max(0, Math.min(cards.length - 1, to));
    if (from > 0) cards[from - 1].tiedNext = false;
    const [card] = cards.splice(from, 1);
    card.tiedNext = false;
    cards.splice(to, 0, card);
    if (to > 0) cards[to - 1].tiedNext = false;
    selected = to;
    render();
  }

  function toggleTie(i) {
    cards[i].tiedNext = !cards[i].tiedNext;
    selected = i;
    render();
  }

  // Drag by the handle: the card follows the pointer through the list; dropping it sets its place.
  function drag(event, li, from) {
    if (event.button !== 0 || busy) return;
    event.preventDefault();
    select(from);
    li.classList.add("dragging");
    document.body.classList.add("dragging");
    const follow = (e) => {
      const before = [...list.children].find((other) => {
        if (other === li) return false;
        const box = other.getBoundingClientRect();
        return e.clientY < box.top + box.height / 2;
      });
      list.insertBefore(li, before || null);
    };
    const drop = () => {
      window.removeEventListener("pointermove", follow);
      window.removeEventListener("pointerup", drop);
      window.removeEventListener("pointercancel", drop);
      document.body.classList.remove("dragging");
      move(from, [...list.children].indexOf(li));
    };
    window.addEventListener("pointermove", follow);
    window.addEventListener("pointerup", drop);
    window.addEventListener("pointercancel", drop);
  }

  async function submit(verdict) {
    if (!item || busy) return;
    busy = true;
    buttons.forEach((b) => { b.disabled = true; });
    const judged = item.id;
    try {
      await api("api/rank", {annotator: annotator(), item_id: judged, verdict, note: note.value,
                             order: verdict === "ranked" ? groups().map((g) => g.map((c) => c.id)) : []});
      const what = {ranked: "ranked", all_bad: "marked all bad", skip: "skipped"}[verdict];
      status(`Saved: item ${judged} ${what}.`, "saved");
      await load();
    } catch (error) {
      status(`Not saved: ${error.message}`, "error");
    } finally {
      busy = false;
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  document.getElementById("submit").addEventListener("click", () => submit("ranked"));
  document.getElementById("all-bad").addEventListener("click", () => submit("all_bad"));
  document.getElementById("skip").addEventListener("click", () => submit("skip"));

  document.addEventListener("keydown", (e) => {
    if (!item || busy || e.altKey) return;
    if (typing(e)) {
      if (e.target === note && e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit("ranked"); }
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey) return;
    const key = e.key;
    if (key === "ArrowUp" || key === "ArrowDown") {
      e.preventDefault();
      const step = key === "ArrowUp" ? -1 : 1;
      if (e.shiftKey) move(selected, selected + step);
      else { select(selected + step); list.children[selected].focus(); }
    } else if (/^[1-9]$/.test(key) && Number(key) <= cards.length) {
      e.preventDefault();
      move(selected, Number(key) - 1);
    } else if (key === "t" || key === "T" || key === "=") {
      if (selected < cards.length - 1) toggleTie(selected);
    } else if (key === "Enter" && !e.target.matches("button")) {
      e.preventDefault();
      submit("ranked");
    } else if (key === "b" || key === "B") {
      submit("all_bad");
    } else if (key === "s" || key === "S") {
      submit("skip");
    } else if (key === "n" || key === "N") {
      e.preventDefault();
      note.focus();
    }
  });

  load();
})();
