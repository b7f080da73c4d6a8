// emtl_stream ui: renders the parts pushed by /events (Server-Sent Events) and sends the
// buttons' requests to /api/*. Plain JS, no framework, no network beyond this server.
// Every text from the daemon goes through textContent (never innerHTML).
"use strict";

const state = {};           // the latest value of every part
let promptAt = 0;           // performance.now() when the current prompt part arrived
let serverUp = false;       // the EventSource to this server is open
let busy = false;           // a button's request is in flight
let activityScale = 0;      // slowly decaying maximum of the channel activity
let shownClasses = "";      // class list the checkboxes were built for

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- icons and names
const ICONS = [
  [/rest|no.?motion|relax|neutral|none/, "rest"],
  [/open|spread/, "open"],
  [/clos|fist|grip|grasp|power/, "close"],
  [/flex/, "flex"],
  [/ext/, "ext"],
  [/pron|supin|rotat/, "rotate"],
  [/point|index/, "point"],
  [/pinch|tripod|key|lateral/, "pinch"],
];

function iconFor(name) {
  const n = String(name || "").toLowerCase();
  for (const [re, icon] of ICONS) if (re.test(n)) return "#icon-" + icon;
  return "#icon-generic";
}

function displayName(name) {
  const s = String(name).replace(/[_-]+/g, " ").trim();
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function setIcon(svg, name) {
  svg.querySelector("use").setAttribute("href", iconFor(name));
}

function fmt(x, digits) {
  return (x === null || x === undefined || !isFinite(x)) ? "—" : Number(x).toFixed(digits);
}

function clockTime(epochS) {
  return epochS ? new Date(epochS * 1000).toTimeString().slice(0, 8) : "—";
}

// ---------------------------------------------------------------- views
function showView() {
  const view = location.hash === "#patient" ? "patient" : "operator";
  for (const v of ["patient", "operator"]) {
    $(v).classList.toggle("shown", v === view);
    $("tab-" + v).classList.toggle("active", v === view);
  }
}
window.addEventListener("hashchange", showView);

// ---------------------------------------------------------------- rendering
function renderConn() {
  const conn = $("conn");
  const link = state.link || {};
  let text, up = false;
  if (!serverUp) {
    text = "Lost the connection to the ui server — reconnecting…";
  } else if (!link.daemon) {
    text = `Daemon not reachable at ${link.control}: ${link.error || "no reply"} — retrying`;
  } else {
    const st = state.status || {};
    text = `Connected to the daemon (${st.state || "?"})`;
    up = true;
  }
  conn.textContent = text;
  conn.classList.toggle("up", up);
  conn.classList.toggle("down", !up);
  const banner = $("p-banner");
  banner.hidden = up;
  banner.textContent = up ? "" : "Not connected — please wait";
}

function renderPred() {
  const p = state.pred;
  const classes = (state.status && state.status.classes) || [];
  $("o-label").textContent = p ? displayName(p.label) : "—";
  $("o-confidence").textContent = p ? fmt(p.confidence, 2) : "—";
  $("o-model").textContent = p && p.model !== null ? p.model : "—";
  $("o-rejected").hidden = !(p && p.rejected);
  // proportional speed (absent when the model carries no speed calibration)
  const hasSpeed = !!p && typeof p.speed === "number";
  $("o-speed").textContent = hasSpeed ? fmt(p.speed, 2) : "—";
  $("o-speed-fill").style.width = hasSpeed ? `${Math.round(100 * p.speed)}%` : "0%";
  const box = $("o-proba");
  const proba = p ? p.proba : [];
  if (box.children.length !== classes.length) {
    box.replaceChildren();
    for (const c of classes) {
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.textContent = displayName(c);
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      track.appendChild(fill);
      const val = document.createElement("span");
      val.className = "val";
      row.append(name, track, val);
      box.appendChild(row);
    }
  }
  [...box.children].forEach((row, i) => {
    const v = proba && i < proba.length ? proba[i] : 0;
    row.querySelector(".fill").style.width = (100 * v).toFixed(1) + "%";
    row.querySelector(".val").textContent = (100 * v).toFixed(0) + "%";
    row.classList.toggle("top", !!p && i === p.index);
  });
}

function renderHealth() {
  const st = state.status, h = state.health || {}, link = state.link || {};
  $("h-daemon").textContent = link.daemon
    ? `${st ? st.state : "?"} (up ${fmt(st && st.uptime_s, 0)} s)` : "not reachable";
  const s = (st && st.stream) || {};
  // Without live EMG the last prediction and activity are history: grey them out.
  const stale = !link.daemon || !s.connected;
  $("card-pred").classList.toggle("stale", stale);
  $("card-activity").classList.toggle("stale", stale);
  $("h-stream").textContent = st
    ? `${s.name || "?"} — ${s.connected ? "connected" : "NOT connected"}` : "—";
  $("h-channels").textContent = s.channels ?? "—";
  $("h-rate").textContent = s.rate ? `${fmt(s.rate, 0)} Hz` : "—";
  $("h-wrate").textContent = fmt(h.window_rate_hz, 1);
  $("h-dropped").textContent = st ? st.dropped : "—";
  $("h-lost").textContent = h.lost_messages ?? "—";
  $("h-latency").textContent = h.latency_ms !== null && h.latency_ms !== undefined
    ? `${fmt(h.latency_ms, 1)} ms` : "—";
}

function renderActivity() {
  const a = state.activity;
  const box = $("a-bars");
  if (!a) { box.replaceChildren(); return; }
  $("a-feature").textContent = `(${a.feature})`;
  const peak = Math.max(...a.values, 1e-12);
  activityScale = Math.max(peak, activityScale * 0.99);
  if (box.children.length !== a.values.length) {
    box.replaceChildren();
    a.values.forEach((_, i) => {
      const bar = document.createElement("div");
      bar.className = "chbar";
      const col = document.createElement("div");
      col.className = "col";
      const lab = document.createElement("span");
      lab.textContent = String(i + 1);
      bar.append(col, lab);
      box.appendChild(bar);
    });
  }
  [...box.children].forEach((bar, i) => {
    const frac = a.values[i] / activityScale;
    bar.querySelector(".col").style.height = (90 * frac).toFixed(1) + "%";
    bar.title = `channel ${i + 1}: ${a.values[i].toPrecision(3)}`;
    // A lifted electrode reads far below its neighbours.
    bar.classList.toggle("low", frac < 0.05);
  });
}

function renderClasses() {
  const classes = (state.status && state.status.classes) || [];
  const key = classes.join("\u0000");
  if (key === shownClasses) return;
  shownClasses = key;
  const fs = $("c-classes");
  fs.querySelectorAll("label").forEach((l) => l.remove());
  for (const c of classes) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = c;
    label.append(box, " " + displayName(c));
    fs.appendChild(label);
  }
}

function renderButtons() {
  const link = state.link || {};
  const cal = state.calibration;
  const st = state.status || {};
  const calibrating = (cal && cal.active)
    || ["prompting", "recording", "fitting"].includes(st.state);
  const off = busy || !serverUp || !link.daemon;
  $("btn-recal").disabled = off || calibrating;
  $("btn-unlabelled").disabled = off || calibrating;
  $("btn-ramp").disabled = off || calibrating;
  $("btn-cancel").disabled = off || !calibrating;
  $("btn-rollback").disabled = off || calibrating;
  for (const b of document.querySelectorAll("button.make-live")) b.disabled = off || calibrating;
}

function renderCalibration() {
  const cal = state.calibration;
  const text = $("c-progress");
  if (!cal) { text.textContent = ""; return; }
  if (cal.active) {
    const p = state.prompt;
    text.textContent = `${cal.purpose} running: ${cal.classes.map(displayName).join(", ")}` +
      (p ? ` — step ${p.step} of ${p.of}` : "");
  } else if (cal.outcome === "calibration_done" && cal.ramp) {
    text.textContent = `Last calibration done: speed recalibrated from ramps (map ${cal.model} kept).`;
  } else if (cal.outcome === "calibration_done") {
    text.textContent = `Last calibration done: map ${cal.model} is live.`;
  } else if (cal.outcome === "calibration_failed") {
    text.textContent = `Last calibration failed: ${cal.reason}`;
  }
}

function renderPatient() {
  const p = state.prompt, cal = state.calibration;
  $("p-active").hidden = !p;
  $("p-idle").hidden = !!p;
  if (!p) {
    let idle = "No calibration running. Relax.";
    const unlabelled = cal && (cal.labels === false || /unlabel/.test(cal.purpose || ""));
    if (cal && cal.active) {
      idle = unlabelled ? "Recording: use your hand as usual."
        : cal.ramp ? "Get ready: for each movement, start relaxed and slowly get stronger."
          : "Get ready…";
    }
    else if (cal && cal.outcome === "calibration_done") idle = "Calibration done. Thank you!";
    else if (cal && cal.outcome === "calibration_failed") idle = "Calibration stopped. Relax.";
    $("p-idle-text").textContent = idle;
    return;
  }
  const rest = p.kind === "rest";
  $("p-step").textContent = `Step ${p.step} of ${p.of}`;
  const icon = $("p-icon");
  setIcon(icon, rest ? "rest" : p.class);
  icon.classList.toggle("rest", rest);
  icon.setAttribute("aria-label", rest ? "rest" : displayName(p.class));
  $("p-class").textContent = rest ? "Rest" : displayName(p.class);
  // A ramp step says how to ramp (the daemon's text), a plain class step says hold.
  $("p-instruction").textContent = rest ? "Relax your hand"
    : p.ramp ? (p.instruction || "Slowly ramp up from relaxed to a strong contraction")
      : "Hold this movement";
  $("p-instruction").classList.toggle("ramp", !rest && !!p.ramp);
  const next = $("p-next");
  next.hidden = !(rest && p.next);
  if (rest && p.next) {
    $("p-next-name").textContent = displayName(p.next);
    setIcon($("p-next-icon"), p.next);
  }
  tickPrompt();
}

function tickPrompt() {
  const p = state.prompt;
  if (!p) return;
  // Count down smoothly between pushes from the last remaining_s the daemon sent.
  const left = Math.max(0, p.remaining_s - (performance.now() - promptAt) / 1000);
  $("p-countdown").textContent = left.toFixed(1) + " s";
  const frac = p.duration_s > 0 ? Math.min(1, 1 - left / p.duration_s) : 1;
  $("p-progress").style.width = (100 * frac).toFixed(1) + "%";
  $("p-bar").setAttribute("aria-valuenow", (100 * frac).toFixed(0));
}

// The live map: every pred names it (20 times a second), status only twice a second.
function liveModel() {
  if (state.pred && state.pred.model !== undefined) return state.pred.model;
  return state.status ? state.status.model : null;
}

let historyLive;            // the live map the history table was drawn for

function renderHistory() {
  const rows = state.history || [];
  const live = liveModel();
  historyLive = live;
  const body = $("m-rows");
  body.replaceChildren();
  const liveShown = new Set();
  for (const r of rows) {
    const tr = document.createElement("tr");
    // Rows are newest first: the newest row of the live version is the one that made it live.
    const isLiveRow = r.version === live && !liveShown.has(r.version);
    if (isLiveRow) { tr.className = "live"; liveShown.add(r.version); }
    const why = r.why === "rollback" ? `rollback (from map ${r.previous})`
      : r.why || "—";
    const cells = [
      `${r.version}${isLiveRow ? " (live)" : ""}`, clockTime(r.when), why,
      r.objective !== null && r.objective !== undefined
        ? Number(r.objective).toPrecision(5) : "—",
      r.roll ?? "—",
    ];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    if (r.why !== "rollback" && r.version !== live && Number.isInteger(r.version)) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "make-live";
      b.textContent = "Make live";
      b.setAttribute("aria-label", `Make map ${r.version} live`);
      b.addEventListener("click", () => send("rollback", { version: r.version }, "Roll back"));
      td.appendChild(b);
    }
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function renderAlerts() {
  const ul = $("alerts");
  ul.replaceChildren();
  for (const a of [...(state.alerts || [])].reverse()) {
    const li = document.createElement("li");
    li.className = a.level;
    li.dataset.kind = a.kind;
    li.textContent = `${clockTime(a.when)} ${a.text}`;
    ul.appendChild(li);
  }
}

function render(parts) {
  const has = (...names) => names.some((n) => parts.includes(n));
  if (has("prompt")) promptAt = performance.now();
  if (has("link", "status")) { renderConn(); renderClasses(); }
  if (has("pred", "status")) renderPred();
  if (has("health", "status", "link")) renderHealth();
  if (has("activity")) renderActivity();
  if (has("prompt", "calibration")) { renderPatient(); renderCalibration(); }
  if (has("history", "status") || liveModel() !== historyLive) renderHistory();
  if (has("alerts")) renderAlerts();
  renderButtons();
}

// ---------------------------------------------------------------- buttons
async function send(cmd, body, what) {
  const out = $("cmd-result");
  busy = true;
  renderButtons();
  out.className = "";
  out.textContent = `${what}: sending…`;
  try {
    const resp = await fetch("/api/" + cmd, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const reply = await resp.json();
    if (reply.ok) {
      out.className = "ok";
      out.textContent = cmd === "recalibrate" ? `${what}: started (${fmt(reply.duration_s, 1)} s)`
        : cmd === "rollback" ? `${what}: map ${reply.model} is live (was ${reply.previous})`
        : `${what}: done`;
    } else {
      out.className = "err";
      const who = resp.status === 200 ? "refused by the daemon" : "not sent";
      out.textContent = `${what} ${who}: ${reply.error}`;
    }
  } catch (err) {
    out.className = "err";
    out.textContent = `${what} not sent: the ui server did not answer (${err})`;
  } finally {
    busy = false;
    renderButtons();
  }
}

function rampBody() {
  // every movement (the daemon leaves the resting class out); seconds as typed
  const body = { ramp: true };
  const secs = $("c-seconds").value, reps = $("c-reps").value;
  if (secs !== "") body.seconds_per_class = Number(secs);
  if (reps !== "") body.repetitions = Number(reps);
  return body;
}

function recalibrateBody(labels) {
  const body = {};
  const checked = [...document.querySelectorAll("#c-classes input:checked")].map((b) => b.value);
  if (labels) body.classes = checked;
  const secs = $("c-seconds").value, reps = $("c-reps").value;
  if (secs !== "") body.seconds_per_class = Number(secs);
  if (labels && reps !== "") body.repetitions = Number(reps);
  if (!labels) body.labels = false;
  return body;
}

$("btn-recal").addEventListener("click",
  () => send("recalibrate", recalibrateBody(true), "Recalibrate"));
$("btn-unlabelled").addEventListener("click",
  () => send("recalibrate", recalibrateBody(false), "Recalibrate without labels"));
$("btn-ramp").addEventListener("click",
  () => send("recalibrate", rampBody(), "Calibrate speed (ramps)"));
$("btn-cancel").addEventListener("click", () => send("cancel", {}, "Cancel"));
$("btn-rollback").addEventListener("click", () => send("rollback", {}, "Roll back"));

// ---------------------------------------------------------------- the push connection
function connect() {
  const es = new EventSource("/events");
  es.addEventListener("parts", (e) => {
    const parts = JSON.parse(e.data);
    Object.assign(state, parts);
    render(Object.keys(parts));
  });
  es.onopen = () => { serverUp = true; renderConn(); renderButtons(); };
  es.onerror = () => {
    serverUp = false;
    renderConn();
    renderButtons();
    // EventSource retries by itself while CONNECTING; after a refused stream (CLOSED) we do.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
}

showView();
connect();
(function frame() { tickPrompt(); requestAnimationFrame(frame); })();
