// voicebot console: every device's conversation, live. Every text from a message goes in as text (textContent),
// never as markup. Updates of one device re-render that device's card only.
"use strict";

const STAGES = [["transcript", "transcript"], ["first_sentence", "first sentence"], ["first_audio", "first audio"],
                ["playing", "playing"]];
const devicesEl = document.getElementById("devices");
const cards = new Map();   // thing -> card element
const views = new Map();   // thing -> latest view
let allowAsk = false;
let pending = new Set();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function waterfall(marks) {
  const stages = STAGES.filter(([key]) => typeof marks[key] === "number");
  if (!stages.length) return null;
  const longest = Math.max(1, ...stages.map(([key]) => marks[key]));
  const box = svg("svg", {class: "waterfall", viewBox: "0 0 320 " + (stages.length * 11 + 2), role: "img"});
  box.append(Object.assign(svg("title", {}), {textContent: "end of speech -> each stage, ms"}));
  stages.forEach(([key, label], i) => {
    const ms = Math.max(0, marks[key]);
    box.append(svg("rect", {x: 90, y: i * 11 + 1, width: Math.max(1, 200 * ms / longest), height: 8,
                            fill: ["#9bb8e8", "#7aa6e0", "#4f86d6", "#1f5fbf"][i % 4], "data-stage": key}));
    const name = svg("text", {x: 0, y: i * 11 + 8});
    name.textContent = label;
    const value = svg("text", {x: 294, y: i * 11 + 8});
    value.textContent = ms + " ms";
    box.append(name, value);
  });
  return box;
}

function playButton(url, label) {
  const audio = el("audio", {preload: "none", src: url});
  const button = el("button", {type: "button", text: label, title: "play"});
  button.addEventListener("click", () => { audio.currentTime = 0; audio.play(); });
  const wrap = el("span", {class: "player"}, button, audio);
  return wrap;
}

function renderTurn(thing, turn) {
  const node = el("div", {class: "turn " + turn.status, "data-request": turn.requestId});
  node.append(el("div", {class: "q" + (turn.final ? "" : " partial"), text: turn.question || "…"}));
  if (turn.status !== "open" && turn.status !== "answered") {
    const why = {withdrawn: "withdrawn: the person went on", superseded: "superseded by a newer request",
                 cancelled: "cancelled", interrupted: "interrupted by a newer request"}[turn.status] || turn.status;
    node.append(el("div", {class: "status", text: why}));
  }
  if (turn.sentences.length) {
    const answer = el("div", {class: "a"});
    for (const s of turn.sentences) {
      const line = el("div", {class: "s", "data-seq": String(s.seq)});
      if (s.audio) line.append(playButton(s.audio, "▶"));
      line.append(el("span", {text: s.text}));
      answer.append(line);
    }
    if (turn.wholeAudio && turn.done) {
      const whole = playButton(turn.wholeAudio, "▶ whole answer");
      whole.classList.add("whole");
      answer.append(whole);
    }
    node.append(answer);
  }
  if (turn.apology) node.append(el("div", {class: "apology", text: "the device apologised by itself: " + turn.apology}));
  for (const error of turn.errors) node.append(el("div", {class: "errors", text: "⚠ " + error}));
  const chart = waterfall(turn.waterfall || {});
  if (chart) node.append(chart);
  return node;
}

function askForm(thing) {
  const input = el("input", {type: "text", placeholder: "ask as " + thing, maxlength: "2000"});
  const form = el("form", {class: "ask"}, input, el("button", {type: "submit", text: "ask"}));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const reply = await fetch("ask", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify({thing, text})});
    if (reply.ok) input.value = "";
  });
  return form;
}

function render(thing) {
  const view = views.get(thing);
  const card = el("section", {class: "device", "data-thing": thing});
  const seen = view.lastSeen ? new Date(view.lastSeen).toLocaleTimeString() : "-";
  card.append(el("h2", {}, el("span", {text: thing}),
                 el("span", {class: "badge " + (view.error && view.state !== "speaking" ? "error" : view.state),
                             text: view.state}),
                 el("span", {class: "seen", text: "last seen " + seen})));
  if (view.error) card.append(el("div", {class: "error-line", text: "last error: " + view.error}));
  for (const turn of view.turns) card.append(renderTurn(thing, turn));
  if (allowAsk) card.append(askForm(thing));
  const old = cards.get(thing);
  if (old) old.replaceWith(card); else devicesEl.append(card);
  cards.set(thing, card);
  card.scrollTop = card.scrollHeight;
}

function schedule(thing) {
  pending.add(thing);
  if (pending.size === 1) requestAnimationFrame(() => {
    const things = pending; pending = new Set();
    for (const t of things) render(t);
    document.getElementById("empty").hidden = views.size > 0;
    document.getElementById("counts").textContent = views.size + " device" + (views.size === 1 ? "" : "s");
  });
}

function note(data) {
  if (data.skipped) document.getElementById("notes").textContent =
    data.skipped + " malformed message(s) skipped; last: " + (data.lastSkip || "");
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("events");
  source.onopen = () => { status.textContent = "live"; status.className = "badge live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "badge down"; };
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    allowAsk = data.allowAsk;
    document.getElementById("ask-off").hidden = allowAsk;
    for (const view of data.devices) { views.set(view.thing, view); schedule(view.thing); }
    note(data);
  });
  source.addEventListener("device", (event) => {
    const view = JSON.parse(event.data);
    views.set(view.thing, view);
    schedule(view.thing);
  });
  source.addEventListener("note", (event) => note(JSON.parse(event.data)));
}

connect();
