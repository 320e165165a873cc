// The multistream live page: a client of the session protocol (src/multistream/server/protocol.py).
// Plain JavaScript, no build step. One connection; one session per conversation: text typed while
// an answer streams is a follow-up in the same session (feed with reopen), a question typed after
// the session stopped opens a new one; the lanes keep every turn.
"use strict";

// -- protocol (mirrors protocol.py; PROTOCOL_VERSION must match) ------------------------------------
const PROTOCOL_VERSION = 1;
const Protocol = {
  open: (sampling) => ({ type: "open", version: PROTOCOL_VERSION, sampling }),
  // reopen: a follow-up typed during the answer (the stream was closed with Enter).
  feed: (stream, text, reopen) => (reopen ? { type: "feed", stream, text, reopen: true } : { type: "feed", stream, text }),
  close: (stream) => ({ type: "close", stream }),
  stop: () => ({ type: "stop" }),
  baseline: (text) => ({ type: "baseline", text }),
};

// -- state ---------------------------------------------------------------------------------------
const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);
const $ = (id) => document.getElementById(id);

const page = {
  info: null, // GET /api/info
  socket: null,
  phase: "idle", // idle -> opening -> live -> closed (input done) -> stopped
  inputStream: null, // the stream typing goes to: "user", else the first input stream
  sentUpTo: 0, // characters of the input box already fed
  rows: 0,
  firstKeyAt: null, // performance.now() of the first keystroke of the question
  firstOutputMs: null, // ms from first keystroke to the first visible output token
  baselineFirstMs: null,
  lanes: {}, // stream name -> {el, text, role, atStart}
  turns: 0, // questions asked in this conversation (the lanes keep them all)
  markTurn: false, // the next timeline column starts a new question
  followUpFrom: null, // where in the input box the last follow-up began (null: none pending)
};

// -- lanes and timeline --------------------------------------------------------------------------
function buildLanes() {
  const lanes = $("lanes");
  lanes.textContent = "";
  page.lanes = {};
  const lanesFor = [...page.info.streams, { name: "baseline", role: "baseline" }];
  for (const stream of lanesFor) {
    const el = document.createElement("div");
    el.className = `lane ${stream.role}`;
    el.dataset.stream = stream.name;
    const title = stream.role === "baseline" ? "sequential baseline (base model)" : stream.name;
    el.innerHTML = `<h3><span>${title}</span><span class="muted">${stream.role}</span></h3><div class="text"></div>`;
    lanes.appendChild(el);
    page.lanes[stream.name] = { el, text: el.querySelector(".text"), role: stream.role, atStart: true };
  }
  // The timeline's row labels: one per stream, then the baseline, then the row axis.
  const labels = $("timeline-labels");
  labels.textContent = "";
  for (const name of [...page.info.streams.map((s) => s.name), "baseline", "row"]) {
    const label = document.createElement("div");
    label.textContent = name;
    labels.appendChild(label);
  }
  labels.lastChild.style.height = "14px";
  labels.lastChild.style.lineHeight = "14px";
  $("timeline").textContent = "";
  page.turns = 0;
  applyVisibility();
}

// A new question in the same conversation: a rule in every lane that has text; the earlier
// turns stay above it.
function newTurn() {
  page.turns += 1;
  if (page.turns === 1) return;
  for (const lane of Object.values(page.lanes)) {
    if (!lane.text.textContent) continue;
    const rule = document.createElement("span");
    rule.className = "turn-rule";
    lane.text.appendChild(rule);
    lane.atStart = true;
  }
  page.markTurn = true;
}

function appendToLane(name, piece) {
  const lane = page.lanes[name];
  // The live tokenizer puts a space before every word; a lane (or a turn) starts without it.
  const text = lane.atStart ? piece.trimStart() : piece;
  if (!text) return;
  lane.atStart = false;
  const previous = lane.text.querySelector(".latest");
  if (previous) previous.classList.remove("latest");
  const span = document.createElement("span");
  span.className = "latest";
  span.textContent = text;
  lane.text.appendChild(span);
  lane.el.scrollTop = lane.el.scrollHeight;
}

// One timeline column: a cell per stream (role, text or null for silence; role "none" = no
// row, e.g. the baseline still streams after the session stopped), then the row axis.
function addTimelineColumn(cells, marker, row) {
  const col = document.createElement("div");
  col.className = "tcol" + (marker ? " marker" : "") + (page.markTurn ? " turn" : "");
  if (marker) col.title = "input closed (Enter)";
  page.markTurn = false;
  for (const [role, text] of cells) {
    const cell = document.createElement("div");
    const kind = role === "none" ? "none" : text === null ? (role === "baseline" ? "none" : "") : role;
    cell.className = "cell " + kind;
    if (text !== null) {
      cell.title = text;
      cell.textContent = text.trim();
    }
    col.appendChild(cell);
  }
  const axis = document.createElement("div");
  axis.className = "axis";
  axis.textContent = row !== null && row % 5 === 0 ? String(row) : "";
  col.appendChild(axis);
  const timeline = $("timeline");
  timeline.appendChild(col);
  timeline.scrollLeft = timeline.scrollWidth;
}

function applyVisibility() {
  const showThink = $("show-think").checked;
  const showBaseline = $("show-baseline").checked;
  for (const lane of Object.values(page.lanes)) {
    const hide = (lane.role === "think" && !showThink) || (lane.role === "baseline" && !showBaseline);
    lane.el.classList.toggle("hidden", hide);
  }
}

// -- status --------------------------------------------------------------------------------------
function setStatus(text, cls) {
  const status = $("status");
  status.textContent = text;
  status.className = "status " + (cls || "");
}

function showStats() {
  const parts = [`rows ${page.rows}`];
  if (page.firstOutputMs !== null) parts.push(`first output ${page.firstOutputMs.toFixed(0)} ms after first key`);
  if (page.baselineFirstMs !== null) parts.push(`baseline first token ${page.baselineFirstMs.toFixed(0)} ms`);
  $("stats").textContent = parts.join(" · ");
}

function showError(message) {
  $("error").textContent = message || "";
}

// -- connection ----------------------------------------------------------------------------------
function send(message) {
  page.socket.send(JSON.stringify(message));
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${withToken("/v1/live")}`);
  page.socket = socket;
  socket.onopen = () => setStatus("connected — start typing", "live");
  socket.onclose = () => {
    setStatus("disconnected (reload to reconnect)", "closed");
    page.phase = "stopped";
  };
  socket.onmessage = (frame) => onEvent(JSON.parse(frame.data));
}

// Bucket of baseline tokens that arrived since the last row, drawn with the next timeline column.
let baselineSinceRow = null;

function onEvent(event) {
  switch (event.type) {
    case "ready":
      page.followUpFrom = null;
      page.phase = page.phase === "opening" ? "live" : page.phase;
      setStatus(`session ${event.session} live`, "live");
      break;
    case "row": {
      page.rows = event.row + 1;
      const cells = [];
      for (const stream of page.info.streams) {
        const text = event.text[stream.name];
        cells.push([stream.role, text]);
        if (text !== null && stream.role !== "input") {
          appendToLane(stream.name, text);
          if (stream.role === "output" && page.firstOutputMs === null && page.firstKeyAt !== null) {
            page.firstOutputMs = performance.now() - page.firstKeyAt;
          }
        } else if (text !== null) {
          appendToLane(stream.name, text);
        }
      }
      cells.push(["baseline", baselineSinceRow]);
      baselineSinceRow = null;
      // Outline the first row after the question was completed (Enter).
      const marker = page.phase === "closed" && !page.markedClose;
      if (marker) page.markedClose = true;
      addTimelineColumn(cells, marker, event.row);
      showStats();
      break;
    }
    case "baseline_token":
      if (page.baselineFirstMs === null && page.firstKeyAt !== null) {
        page.baselineFirstMs = performance.now() - page.firstKeyAt;
      }
      appendToLane("baseline", event.text);
      if (page.phase === "stopped" || page.phase === "resetting") {
        // No more rows will come: the baseline keeps its own columns (one token each, the
        // same pace) so its track keeps growing while it streams.
        const cells = page.info.streams.map(() => ["none", null]);
        cells.push(["baseline", event.text]);
        addTimelineColumn(cells, false, null);
      } else {
        baselineSinceRow = (baselineSinceRow || "") + event.text;
      }
      showStats();
      break;
    case "baseline_end":
      break;
    case "stopped": {
      const wasResetting = page.phase === "resetting";
      page.phase = "stopped";
      if (baselineSinceRow !== null) {
        // Baseline tokens that came after the last row get their column now.
        const cells = page.info.streams.map(() => ["none", null]);
        cells.push(["baseline", baselineSinceRow]);
        baselineSinceRow = null;
        addTimelineColumn(cells, false, null);
      }
      setStatus(`stopped (${event.reason}) after ${event.rows} rows — type to ask again`, "");
      if (wasResetting) {
        page.sentUpTo = 0;
        if ($("input").value) onInput(); // typed while the old session wound down
      }
      break;
    }
    case "error":
      if (event.code === "not_open" && page.followUpFrom !== null && page.phase === "stopped") {
        // The answer ended just before the follow-up arrived: it becomes a new question.
        page.sentUpTo = page.followUpFrom;
        page.followUpFrom = null;
        onInput();
        break;
      }
      showError(`${event.code}: ${event.message}`);
      // A refused open (e.g. the server is full): the next keystroke tries again.
      if (page.phase === "opening") page.phase = "idle";
      break;
  }
}

// -- typing --------------------------------------------------------------------------------------
function startQuestion() {
  newTurn(); // the conversation's earlier turns stay in the lanes
  page.rows = 0;
  page.sentUpTo = 0;
  page.firstKeyAt = performance.now();
  page.firstOutputMs = null;
  page.baselineFirstMs = null;
  page.markedClose = false;
  baselineSinceRow = null;
  showError("");
  page.phase = "opening";
  send(Protocol.open(samplingSettings()));
}

function samplingSettings() {
  const settings = {};
  for (const name of ["temperature", "top_k", "top_p", "silence_penalty", "seed"]) {
    const value = $(name).value;
    if (value !== "") settings[name] = Number(value);
  }
  return settings;
}

function onInput() {
  const box = $("input");
  if (page.phase === "stopped" || page.phase === "idle") {
    if (page.phase === "stopped") {
      // A new question: keep only what was typed since the session stopped.
      box.value = box.value.slice(page.sentUpTo).trimStart();
    }
    startQuestion();
  }
  if (page.phase === "resetting") return;
  // Feed only completed words (followed by whitespace): the engine encodes " " + word.
  const value = box.value;
  const lastSpace = Math.max(value.lastIndexOf(" "), value.lastIndexOf("\n"));
  if (lastSpace + 1 > page.sentUpTo) {
    const words = value.slice(page.sentUpTo, lastSpace + 1);
    if (words.trim() && page.phase === "closed") {
      // Typed while the answer streams: a follow-up in the same session (the model keeps
      // what it read and wrote); the lanes mark the new turn and keep the earlier ones.
      newTurn();
      page.phase = "live";
      page.markedClose = false;
      page.followUpFrom = page.sentUpTo; // if the session ended meanwhile, these words ask anew
      send(Protocol.feed(page.inputStream, words, true));
      setStatus("follow-up — your words join the running answer", "live");
    } else if (words.trim()) {
      send(Protocol.feed(page.inputStream, words));
    }
    page.sentUpTo = lastSpace + 1;
  }
}

function onKeyDown(event) {
  if (event.key === "Escape") {
    stopSession();
    return;
  }
  if (event.key !== "Enter") return;
  event.preventDefault();
  if (page.phase !== "live" && page.phase !== "opening") return;
  const box = $("input");
  const rest = box.value.slice(page.sentUpTo);
  if (rest.trim()) send(Protocol.feed(page.inputStream, rest));
  page.sentUpTo = box.value.length;
  send(Protocol.close(page.inputStream));
  page.phase = "closed";
  if ($("show-baseline").checked && box.value.trim()) send(Protocol.baseline(box.value.trim()));
  setStatus("question complete — answering", "live");
}

function stopSession() {
  if (page.phase === "live" || page.phase === "opening" || page.phase === "closed") send(Protocol.stop());
}

function reset() {
  $("input").value = "";
  page.sentUpTo = 0;
  if (page.phase === "live" || page.phase === "opening" || page.phase === "closed") {
    // The next question starts once the server confirms the stop ("stopped").
    send(Protocol.stop());
    page.phase = "resetting";
  }
  buildLanes();
  $("input").focus();
}

// -- start ---------------------------------------------------------------------------------------
async function main() {
  const response = await fetch(withToken("api/info"));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const reason = (body.error && body.error.message) || body.detail || "";
    showError(`cannot load api/info: ${response.status} ${reason}`);
    setStatus("not authorised", "closed");
    return;
  }
  page.info = await response.json();
  $("model-name").textContent = page.info.model;
  // Layout B models also have a system block: typing goes to "user" when there is one.
  const inputs = page.info.streams.filter((s) => s.role === "input");
  const input = inputs.find((s) => s.name === "user") || inputs[0];
  page.inputStream = input ? input.name : null;
  for (const [name, value] of Object.entries(page.info.sampling)) {
    if ($(name) && value !== null) $(name).value = value;
  }
  buildLanes();
  $("input").addEventListener("input", onInput);
  $("input").addEventListener("keydown", onKeyDown);
  $("stop").addEventListener("click", stopSession);
  $("reset").addEventListener("click", reset);
  $("show-think").addEventListener("change", applyVisibility);
  $("show-baseline").addEventListener("change", applyVisibility);
  connect();
  $("input").focus();
}

main();
