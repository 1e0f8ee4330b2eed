// APIS annotation page: ask the server for a question, show the region around the instance with its box
// and a crosshair on the point, send the answer with the seconds it took. Keys: Y / N / U answer,
// Z undoes the last answer, + / - zoom. Plain JavaScript, no build step (docs/annotate.md).
"use strict";

const ZOOMS = [1, 1.5, 2, 3, 4, 6, 8, 12, 16];
const POLL_MS = 10000; // how often to look again when the remaining questions are with others
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const RETRY_MS = [1000, 2000, 4000, 8000, 10000]; // waits between tries while the server cannot be reached
const MAX_SKIPPED = 100; // the server takes at most this many question ids to pass over

// pending: an answer sent but not confirmed (sent again once the server is back); skipped: questions whose
// image did not load, passed over for the rest of the session.
const state = { question: null, shownAt: null, busy: false, zoom: 0, pollTimer: null, retryTimer: null,
                retries: 0, pending: null, skipped: [] };

// Every change is a POST with a JSON body ({} when it carries nothing): the server refuses any other kind.
async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (method === "POST") {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body === undefined ? {} : body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (cause) { // no answer at all: the server is down or restarting
    const error = new Error("the server cannot be reached");
    error.status = 0;
    throw error;
  }
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text) { $("message").textContent = text || ""; }

function showStanding(data) {
  const p = data.progress;
  const percent = p.total ? Math.round((100 * p.answered) / p.total) : 0;
  $("progress-fill").style.width = `${percent}%`;
  $("progress-bar").setAttribute("aria-valuenow", String(percent));
  $("progress-text").textContent = p.step === null ? "no questions yet"
    : `step ${p.step}: ${p.answered} / ${p.total} answered (you: ${p.mine})`;
  const pace = data.pace;
  $("pace").textContent = pace.median_seconds === null ? "" :
    `your pace: ${pace.median_seconds.toFixed(1)} s/answer · ${pace.answers} answers`;
}

// ---- drawing -------------------------------------------------------------------------------------
function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function layout() {
  const q = state.question;
  if (!q) return;
  const [, , width, height] = q.crop;
  const viewport = $("viewport");
  const fit = Math.min((viewport.clientWidth - 16) / width, (viewport.clientHeight - 16) / height);
  const scale = Math.max(fit, 0.1) * ZOOMS[state.zoom];
  const stage = $("stage");
  stage.style.width = `${width * scale}px`;
  stage.style.height = `${height * scale}px`;
  stage.style.marginTop = `${Math.max(8, (viewport.clientHeight - height * scale) / 2)}px`;
  drawOverlay(q, scale);
  $("zoom-text").textContent = `${Math.round(ZOOMS[state.zoom] * 100)} %`;
  // Keep the point in view when zoomed in.
  const [cx, cy] = q.crop;
  viewport.scrollLeft = (q.point[0] + 0.5 - cx) * scale - viewport.clientWidth / 2;
  viewport.scrollTop = (q.point[1] + 0.5 - cy) * scale + stage.offsetTop - viewport.clientHeight / 2;
}

// Box and crosshair in crop pixel coordinates; strokes keep their screen width at any zoom
// (non-scaling-stroke), and the crosshair leaves a gap of fixed screen size around the pixel itself.
function drawOverlay(q, scale) {
  const overlay = $("overlay");
  const [cx, cy, width, height] = q.crop;
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  overlay.setAttribute("preserveAspectRatio", "none");
  overlay.replaceChildren();
  const [x0, y0, x1, y1] = q.box;
  const box = { x: x0 - cx, y: y0 - cy, width: x1 - x0, height: y1 - y0, fill: "none", "vector-effect": "non-scaling-stroke" };
  overlay.append(svg("rect", { ...box, stroke: "#000", "stroke-width": 4 }));
  overlay.append(svg("rect", { ...box, stroke: "#4fc3f7", "stroke-width": 2, "stroke-dasharray": "6 4" }));
  const px = q.point[0] + 0.5 - cx, py = q.point[1] + 0.5 - cy;
  const gap = Math.max(7 / scale, 0.5), arm = 26 / scale;
  const arms = [[px - gap - arm, py, px - gap, py], [px + gap, py, px + gap + arm, py],
                [px, py - gap - arm, px, py - gap], [px, py + gap, px, py + gap + arm]];
  for (const [colour, strokeWidth] of [["#000", 5], ["#fff", 2]]) {
    for (const [ax, ay, bx, by] of arms) {
      overlay.append(svg("line", { x1: ax, y1: ay, x2: bx, y2: by, stroke: colour, "stroke-width": strokeWidth,
                                   "stroke-linecap": "round", "vector-effect": "non-scaling-stroke" }));
    }
  }
  if (scale >= 6) { // the pixel itself, once pixels are big enough to see
    const pixel = { x: q.point[0] - cx, y: q.point[1] - cy, width: 1, height: 1, fill: "none",
                    "vector-effect": "non-scaling-stroke" };
    overlay.append(svg("rect", { ...pixel, stroke: "#000", "stroke-width": 3 }));
    overlay.append(svg("rect", { ...pixel, stroke: "#fff", "stroke-width": 1 }));
  }
}

function showQuestion(q) {
  state.question = q;
  state.shownAt = null;
  state.zoom = 0; // each question starts fitted to the view, its whole box visible
  const stage = $("stage");
  stage.dataset.ready = "0";
  $("empty").hidden = true;
  stage.hidden = false;
  if (!q) return;
  stage.dataset.questionId = String(q.id);
  $("category").textContent = q.category;
  $("meta").textContent = `question ${q.id} · step ${q.step} · annotation ${q.ann_id} · image ${q.image_id} · ` +
    `point (${q.point[0]}, ${q.point[1]})`;
  const img = $("crop");
  img.onload = () => {
    layout();
    state.shownAt = performance.now(); // the answer's time starts when the person can see the question
    stage.dataset.ready = "1";
  };
  // A question the page cannot show goes back to the others at once (its lease released), and the next comes.
  const skip = () => {
    if (state.question !== q) return;
    if (state.busy) { setTimeout(skip, 200); return; }
    guarded(async () => {
      state.skipped = [...state.skipped, q.id].slice(-MAX_SKIPPED);
      await next();
      say(`the image of question ${q.id} could not be loaded; it was given back and skipped`);
    });
  };
  img.onerror = skip;
  img.src = q.image_url;
}

function showEmpty(data) {
  state.question = null;
  $("stage").hidden = true;
  $("stage").dataset.ready = "0";
  const p = data.progress, empty = $("empty");
  empty.hidden = false;
  clearTimeout(state.pollTimer);
  if (p.step === null) {
    empty.textContent = "No questions yet. Start the run with oracle.kind=human (apis run CONFIG); it stores " +
      "each step's questions here.";
  } else if (data.leased_to_others > 0 || p.answered < p.total) {
    empty.textContent = `You have answered all you can for now; ${p.total - p.answered} question(s) are with ` +
      "other annotators. Looking again every 10 s.";
    state.pollTimer = setTimeout(() => guarded(next), POLL_MS);
  } else {
    empty.textContent = `All ${p.total} questions of step ${p.step} have their answers. ` +
      "Run the same `apis run` command again to train on them and select the next step's questions.";
  }
}

// ---- actions ---------------------------------------------------------------------------------------
async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  document.body.dataset.busy = "1";
  document.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  try {
    await action();
    state.retries = 0;
  } catch (error) {
    if (error.status === 0) retryLater();
    else if (error.status === 401 && /log in/.test(error.message)) showLogin();
    else say(error.message);
  } finally {
    state.busy = false;
    document.body.dataset.busy = "0";
    document.querySelectorAll("button").forEach((b) => { b.disabled = false; });
  }
}

// The server is down (restarting?): try again, less and less often, until it answers; an answer given
// meanwhile is sent first, so nothing the person did is lost.
function retryLater() {
  const wait = RETRY_MS[Math.min(state.retries, RETRY_MS.length - 1)];
  state.retries += 1;
  say(`the server cannot be reached; trying again in ${wait / 1000} s` +
      (state.pending ? ` (your answer to question ${state.pending.question} will be sent then)` : ""));
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(() => {
    state.retryTimer = null;
    if (state.busy) { retryLater(); return; }
    guarded(async () => {
      if (!(await sendPending())) say("connected to the server again");
      await next();
    });
  }, wait);
}

async function next() {
  clearTimeout(state.pollTimer);
  const data = await api("POST", "api/next", { skip: state.skipped });
  showStanding(data);
  if (data.question) showQuestion(data.question); else showEmpty(data);
}

// Send the answer given last, if any, and say what became of it (true when there was one). Unconfirmed because
// the server cannot be reached, it is kept (and sent again by retryLater). A conflict (the lease ran out and
// the question went to someone else, or a retried answer that had been stored already) is said, and the page
// moves on.
async function sendPending() {
  const pending = state.pending;
  if (!pending) return false;
  let data;
  try {
    data = await api("POST", "api/answer", pending);
  } catch (error) {
    if (error.status === 0) throw error;
    state.pending = null;
    if (error.status !== 409) throw error;
    say(`question ${pending.question}: ${error.message}; here is the next one`);
    return true;
  }
  state.pending = null;
  showStanding(data);
  say(`question ${pending.question}: ${pending.label} (${pending.seconds.toFixed(1)} s)`);
  return true;
}

function answer(label) {
  return guarded(async () => {
    const q = state.question;
    if (!q || state.shownAt === null || state.pending) return;
    const seconds = (performance.now() - state.shownAt) / 1000;
    state.pending = { question: q.id, label, seconds };
    await sendPending();
    await next();
  });
}

function undo() {
  return guarded(async () => {
    const data = await api("POST", "api/undo");
    showStanding(data);
    say(`answer to question ${data.question.id} taken back: answer it again`);
    showQuestion(data.question);
  });
}

function zoom(delta) {
  state.zoom = Math.min(ZOOMS.length - 1, Math.max(0, state.zoom + delta));
  layout();
}

function showLogin() {
  $("login").hidden = false;
  $("login-name").focus();
}

async function login(event) {
  event.preventDefault();
  try {
    const data = await api("POST", "api/login", { name: $("login-name").value.trim() });
    $("login").hidden = true;
    $("who").textContent = `answering as ${data.annotator}`;
    await guarded(next);
  } catch (error) {
    $("login-error").textContent = error.message;
  }
}

document.addEventListener("keydown", (event) => {
  if (!$("login").hidden || event.target instanceof HTMLInputElement) return;
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const actions = { y: () => answer("yes"), n: () => answer("no"), u: () => answer("unsure"), z: undo,
                    "+": () => zoom(1), "=": () => zoom(1), "-": () => zoom(-1) };
  if (actions[key]) {
    event.preventDefault();
    actions[key]();
  }
});
document.querySelectorAll("[data-label]").forEach((button) => {
  button.addEventListener("click", () => answer(button.dataset.label));
});
$("btn-undo").addEventListener("click", undo);
$("btn-zoom-in").addEventListener("click", () => zoom(1));
$("btn-zoom-out").addEventListener("click", () => zoom(-1));
$("login-form").addEventListener("submit", login);
window.addEventListener("resize", layout);

(async () => {
  try {
    const me = await api("GET", "api/me");
    if (!me.annotator) { showLogin(); return; }
    $("who").textContent = `answering as ${me.annotator}`;
    await guarded(next);
  } catch (error) {
    say(error.message);
  }
})();
