// The lemoe console: one page per hash (#edits, #experts, #playground, #training), every read
// and action through the /v1 API with the user's key. Hand-written, no dependencies, no build.
"use strict";

const KEY = "lemoe.apiKey";
const PAGES = ["edits", "experts", "playground", "training"];
const EDIT_PAGE_SIZE = 20;
const TIMELINE_LABELS = {
  "edit.submitted": "submitted",
  "edit.subject_inferred": "subject inferred",
  "edit.planned": "planned",
  "edit.applied": "applied",
  "edit.failed": "failed",
  "edit.requeued": "requeued",
  "edit.retried": "retried",
  "edit.superseded": "superseded",
  "edit.rolled_back": "rolled back",
  "edit.restored": "restored",
  "edit.cancelled": "cancelled",
  "edit.retraction_requested": "retraction requested",
  "edit.retracted": "retracted",
  "edit.retraction_failed": "retraction failed",
  "edit.retrained": "retrained",
};

const $ = (selector) => document.querySelector(selector);

// --- DOM helpers: text only through textContent, never HTML -------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fixed = (x, digits = 2) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const statusBadge = (status) => h("span", { class: `status status-${status}` }, status.replace("_", " "));
const cell = (label, ...children) => h("td", { "data-label": label }, ...children);

// Rebuild a table body only when its data changed: a live refresh must not take the focus (or
// an open disclosure) from under the user.
function fill(tbody, data, rows) {
  const signature = JSON.stringify(data);
  if (tbody.signature === signature) return;
  tbody.signature = signature;
  tbody.replaceChildren(...rows());
}

// --- talking to the API --------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

function storedKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY) || "";
}

function headers(extra) {
  const key = storedKey();
  // Without a key the server names the actor from X-Actor; with one, the key's name is the actor.
  return { ...(key ? { Authorization: `Bearer ${key}` } : { "X-Actor": "console" }), ...(extra || {}) };
}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `the server did not answer (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.type || error.code || "http_error", error.message || `${method} ${path}: HTTP ${response.status}`);
  }
  return data;
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== null && value !== undefined && value !== "") q.set(name, value);
  const text = q.toString();
  return text ? `?${text}` : "";
};

// --- notices, problems and the key ---------------------------------------------------------
function notify(message) {
  $("#notice").textContent = message;
}

function clearProblem() {
  const box = $("#problem");
  box.hidden = true;
  box.replaceChildren();
}

function showProblem(err) {
  const box = $("#problem");
  let title = "Something went wrong";
  if (err.status === 401) {
    title = storedKey() ? "The server refused this API key" : "This server needs an API key";
    openKeyPanel(
      "Paste an API key: read to look around, edits:write to submit edits and train, generate for the playground, admin to roll back.",
    );
  } else if (err.status === 403) {
    title = "Your API key does not allow this";
  } else if (err.status === 409) {
    title = "Not possible right now";
  } else if (err.status === 422 || err.status === 400) {
    title = "Please check the input";
  } else if (err.status === 429) {
    title = "Too many requests";
  } else if (err.status === 503) {
    title = "The server is not ready";
  }
  box.replaceChildren(h("strong", {}, title), h("span", {}, err.message || String(err)));
  box.hidden = false;
}

// Run an action; its problem (if any) is shown, never thrown further.
async function attempt(action) {
  try {
    return await action();
  } catch (err) {
    if (!(err instanceof ApiError)) console.error(err);
    showProblem(err);
    return undefined;
  }
}

function openKeyPanel(reason) {
  const panel = $("#key-panel");
  panel.hidden = false;
  $("#key-toggle").setAttribute("aria-expanded", "true");
  if (reason) $("#key-reason").textContent = reason;
  $("#key-input").focus();
}

function setUpKey() {
  $("#key-toggle").addEventListener("click", () => {
    const panel = $("#key-panel");
    panel.hidden = !panel.hidden;
    $("#key-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) $("#key-input").focus();
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    ($("#key-remember").checked ? localStorage : sessionStorage).setItem(KEY, key);
    $("#key-input").value = "";
    $("#key-panel").hidden = true;
    $("#key-toggle").setAttribute("aria-expanded", "false");
    showKeyState();
    clearProblem();
    notify("Using the API key you gave.");
    events.restart();
    render();
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    showKeyState();
    notify("The API key is forgotten.");
    events.restart();
  });
  showKeyState();
}

function showKeyState() {
  $("#key-toggle").textContent = storedKey() ? "API key: set" : "API key";
}

// --- charts (inline SVG) -------------------------------------------------------------------
function barChart(container, items, label) {
  const width = 720;
  const height = 200;
  const pad = { left: 36, right: 8, top: 10, bottom: 28 };
  const max = Math.max(1, ...items.map((i) => i.count));
  const step = (width - pad.left - pad.right) / Math.max(1, items.length);
  const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - v / max);
  const total = items.reduce((sum, i) => sum + i.count, 0);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${label}: ${total} in all` });
  chart.append(svg("title", {}, `${label}: ${total} in all`));
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0) }));
  chart.append(svg("text", { x: pad.left - 6, y: y(max) + 4, "text-anchor": "end" }, max));
  chart.append(svg("text", { x: pad.left - 6, y: y(0) + 4, "text-anchor": "end" }, 0));
  items.forEach((item, i) => {
    const x = pad.left + i * step;
    if (item.count > 0) {
      chart.append(
        svg("rect", { class: "bar", x: x + step * 0.15, width: step * 0.7, y: y(item.count), height: y(0) - y(item.count) },
          svg("title", {}, `${item.day}: ${item.count}`)),
      );
    }
    if ((items.length - 1 - i) % 7 === 0) { // weekly, counted back from today
      chart.append(svg("text", { x: x + step / 2, y: height - 8, "text-anchor": "middle" }, item.day.slice(5)));
    }
  });
  container.replaceChildren(chart, h("p", { class: "summary" }, `${total} in the last ${items.length} days.`));
}

function histogram(container, scores, gate, floor) {
  const width = 720;
  const height = 200;
  const pad = { left: 36, right: 8, top: 18, bottom: 28 };
  if (scores.length === 0) {
    container.replaceChildren(h("p", { class: "summary" }, "No routed requests yet: scores appear once experts are live and prompts arrive."));
    return;
  }
  const low = Math.min(0, Math.floor(Math.min(...scores.map((s) => s.score)) * 10) / 10);
  const high = 1;
  const bins = 20;
  const binWidth = (high - low) / bins;
  const counts = Array.from({ length: bins }, () => ({ served: 0, shut: 0 }));
  for (const s of scores) {
    const i = Math.min(bins - 1, Math.max(0, Math.floor((s.score - low) / binWidth)));
    counts[i][s.expert ? "served" : "shut"] += 1;
  }
  const max = Math.max(1, ...counts.map((c) => c.served + c.shut));
  const x = (v) => pad.left + ((width - pad.left - pad.right) * (v - low)) / (high - low);
  const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - v / max);
  const served = scores.filter((s) => s.expert).length;
  const label = `Route scores of ${scores.length} recent requests: ${served} served by an expert, gate at ${fixed(gate)}`;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  chart.append(svg("title", {}, label));
  chart.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0) }));
  counts.forEach((c, i) => {
    const left = x(low + i * binWidth) + 1;
    const w = Math.max(1, x(low + (i + 1) * binWidth) - x(low + i * binWidth) - 2);
    const range = `${fixed(low + i * binWidth)} to ${fixed(low + (i + 1) * binWidth)}`;
    if (c.shut) chart.append(svg("rect", { class: "bar shut", x: left, width: w, y: y(c.shut), height: y(0) - y(c.shut) }, svg("title", {}, `${range}: ${c.shut} not served`)));
    if (c.served) chart.append(svg("rect", { class: "bar", x: left, width: w, y: y(c.shut + c.served), height: y(c.shut) - y(c.shut + c.served) }, svg("title", {}, `${range}: ${c.served} served`)));
  });
  for (let t = Math.ceil(low * 2) / 2; t <= high + 1e-9; t += 0.5) {
    chart.append(svg("text", { x: x(t), y: height - 8, "text-anchor": "middle" }, t.toFixed(1)));
  }
  chart.append(svg("text", { x: pad.left - 6, y: y(max) + 4, "text-anchor": "end" }, max));
  if (floor !== null && floor !== undefined && floor < gate) {
    chart.append(svg("line", { class: "floor", x1: x(floor), x2: x(floor), y1: pad.top - 8, y2: y(0) }));
    chart.append(svg("text", { x: x(floor), y: pad.top - 8, "text-anchor": "end", dx: -4 }, `subject floor ${fixed(floor)}`));
  }
  chart.append(svg("line", { class: "gate", x1: x(gate), x2: x(gate), y1: pad.top - 8, y2: y(0) }));
  chart.append(svg("text", { x: x(gate), y: pad.top - 8, "text-anchor": x(gate) > width - 80 ? "end" : "start", dx: 4 }, `gate ${fixed(gate)}`));
  container.replaceChildren(
    chart,
    h("p", { class: "summary" },
      `${scores.length} requests; ${served} served by an expert (blue), ${scores.length - served} answered by the base model (grey). ` +
      "Red dashes: the gate for edits without a subject" + (floor !== null && floor < gate ? "; grey dashes: the floor for edits with a subject, which fire on their subject match." : ".")),
  );
}

// --- edits -------------------------------------------------------------------------------
// `renders` counts renders begun: an answer that comes back after a newer render began (the event
// stream's refresh under the old filter, answered late) is dropped instead of drawn over the newer.
const editList = { cursors: [null], page: 0, next: null, filters: {}, open: null, renders: 0 };

function editRows(items) {
  const rows = items.map((e) =>
    h("tr", { "data-edit-id": e.id },
      cell("Edit", h("button", { type: "button", class: "secondary", "aria-label": `Edit ${e.id}: show its timeline`, onclick: () => attempt(() => showEdit(e.id)) }, `#${e.id}`)),
      cell("Status", statusBadge(e.status)),
      cell("Subject", e.subject || "—"),
      cell("Prompt → target", h("span", {}, e.prompt, " ", h("span", { class: "arrow", "aria-hidden": "true" }, "→"), h("span", { class: "visually-hidden" }, "becomes"), " ", h("span", { class: "target" }, e.target))),
      cell("Expert", e.expert_id ? `#${e.expert_id}` : "—"),
      cell("Submitted", when(e.created_at)),
    ),
  );
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { colspan: 6 }, "No edits match.")));
  return rows;
}

async function renderEdits() {
  const render = ++editList.renders;
  const [page, daily] = await Promise.all([
    api("GET", `/v1/edits${query({ ...editList.filters, limit: EDIT_PAGE_SIZE, cursor: editList.cursors[editList.page] })}`),
    api("GET", "/v1/audit/daily?action=edit.applied&days=30"),
  ]);
  if (render !== editList.renders) return;
  barChart($("#applied-chart"), daily.items, "Edits applied per day");
  editList.next = page.next_cursor;
  fill($("#edits-table tbody"), page.items, () => editRows(page.items));
  $("#edits-next").disabled = !editList.next;
  $("#edits-first").disabled = editList.page === 0;
  if (editList.open !== null) await showEdit(editList.open, false); // its timeline may have grown
}

async function showEdit(id, focus = true) {
  editList.open = id;
  const [edit, history] = await Promise.all([api("GET", `/v1/edits/${id}`), api("GET", `/v1/edits/${id}/events?limit=200`)]);
  const detail = $("#edit-detail");
  const signature = JSON.stringify([edit, history.items]);
  if (!focus && detail.signature === signature) return;
  detail.signature = signature;
  $("#edit-detail-title").textContent = `Edit #${edit.id}`;
  const facts = [
    ["Status", statusBadge(edit.status)],
    ["Prompt", edit.prompt],
    ["Target", edit.target],
    ["Subject", edit.subject ? `${edit.subject}${edit.subject_source === "inferred" ? " (inferred)" : ""}` : "—"],
    ["Rephrases", edit.rephrases.length ? edit.rephrases.join(" · ") : "—"],
    ["Expert", edit.expert_id ? `#${edit.expert_id}` : "—"],
    ["Training run", edit.training_run_id ? `#${edit.training_run_id}` : "—"],
  ];
  if (edit.error) facts.push(["Error", edit.error]);
  $("#edit-fields").replaceChildren(...facts.flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]));
  $("#edit-timeline").replaceChildren(
    ...history.items.map((event) => {
      const details = Object.entries(event.payload || {})
        .filter(([, v]) => v !== null && typeof v !== "object")
        .map(([k, v]) => `${k}: ${v}`)
        .join(", ");
      return h("li", { "data-action": event.action },
        h("strong", {}, TIMELINE_LABELS[event.action] || event.action),
        " ",
        h("span", { class: "when" }, `${when(event.at)} by ${event.actor}`),
        details ? h("div", { class: "muted" }, details) : null,
      );
    }),
  );
  const actions = [];
  if (["pending", "planned", "training"].includes(edit.status)) {
    actions.push(h("button", { type: "button", class: "danger", onclick: () => withdraw(edit, "Cancel") }, "Cancel this edit"));
  } else if (edit.status === "applied") {
    actions.push(h("button", { type: "button", class: "danger", onclick: () => withdraw(edit, "Retract") }, "Retract this edit"));
  } else if (edit.status === "failed") {
    actions.push(h("button", { type: "button", onclick: () => attempt(async () => {
      await api("POST", `/v1/edits/${edit.id}/retry`);
      notify(`Edit #${edit.id} is pending again.`);
      await showEdit(edit.id);
      await renderEdits();
    }) }, "Retry this edit"));
  }
  $("#edit-actions").replaceChildren(...actions);
  $("#edit-detail").hidden = false;
  if (focus) $("#edit-detail-title").focus();
}

function withdraw(edit, verb) {
  const consequence = verb === "Cancel" ? "It will never be applied." : "Its expert is retrained without it; then its prompt gets the base model's answer.";
  if (!window.confirm(`${verb} edit #${edit.id} (“${edit.prompt} → ${edit.target}”)? ${consequence}`)) return;
  attempt(async () => {
    const changed = await api("DELETE", `/v1/edits/${edit.id}`);
    notify(`Edit #${edit.id} is now ${changed.status.replace("_", " ")}.`);
    await showEdit(edit.id);
    await renderEdits();
  });
}

function setUpEdits() {
  $("#edit-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    editList.filters = { status: form.get("status"), subject: form.get("subject").trim(), q: form.get("q").trim() };
    editList.cursors = [null];
    editList.page = 0;
    attempt(renderEdits);
  });
  $("#edits-next").addEventListener("click", () => {
    if (!editList.next) return;
    editList.cursors[editList.page + 1] = editList.next;
    editList.page += 1;
    attempt(renderEdits);
  });
  $("#edits-first").addEventListener("click", () => {
    editList.page = 0;
    attempt(renderEdits);
  });
}

// --- experts -------------------------------------------------------------------------------
function checkFigures(check) {
  if (!check) return "—";
  return h("ul", { class: "plain" },
    h("li", {}, `edits answered ${check.edits_answered}/${check.edits} (${fixed(check.edit_rate)})`),
    h("li", {}, `unrelated kept ${check.locality_kept}/${check.locality} (${fixed(check.locality_rate)})`),
    h("li", {}, `other edits kept ${check.others_kept}/${check.others} (${fixed(check.others_rate)})`),
  );
}

function heldEdits(expert) {
  const list = h("ol", {});
  const details = h("details", {}, h("summary", {}, `${expert.edit_count} edit${expert.edit_count === 1 ? "" : "s"}`), list);
  details.addEventListener("toggle", () => {
    if (!details.open || list.childElementCount) return;
    attempt(async () => {
      const page = await api("GET", `/v1/edits${query({ expert_id: expert.id, limit: 200 })}`);
      list.replaceChildren(...page.items.map((e) => h("li", {}, `#${e.id} ${e.prompt} → ${e.target} `, statusBadge(e.status))));
    });
  });
  return details;
}

async function renderExperts() {
  const experts = (await api("GET", "/v1/experts")).items;
  const active = experts.filter((e) => e.status === "active");
  $("#experts-summary").textContent = `${active.length} of ${experts.length} expert${experts.length === 1 ? "" : "s"} live.`;
  fill($("#experts-table tbody"), experts, () => expertRows(experts));
}

function expertRows(experts) {
  const rows = experts.map((e) => {
    const live = e.status === "active";
    const action = e.replaced_by_id
      ? `replaced by #${e.replaced_by_id}`
      : h("button", { type: "button", class: live ? "danger" : "", onclick: () => changeExpert(e, live ? "deactivate" : "activate") }, live ? `Deactivate ${e.name}` : `Activate ${e.name}`);
    return h("tr", { "data-expert-id": e.id },
      cell("Expert", h("span", {}, `#${e.id} `, h("code", {}, e.name))),
      cell("Status", statusBadge(e.status)),
      cell("Holds", heldEdits(e)),
      cell("Training", `run #${e.training_run_id ?? "—"}, ${e.steps ?? "—"} steps, loss ${fixed(e.final_loss, 3)}`),
      cell("Pre-live check", checkFigures(e.check)),
      cell("Action", action),
    );
  });
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { colspan: 6 }, "No experts yet: submit edits and start a training run.")));
  return rows;
}

function changeExpert(expert, verb) {
  const consequence = verb === "deactivate"
    ? "Its edits become rolled back and their prompts get the base model's answers."
    : "Its files are checked, then its edits are applied again.";
  if (!window.confirm(`${verb === "deactivate" ? "Deactivate" : "Activate"} expert ${expert.name}? ${consequence}`)) return;
  attempt(async () => {
    const change = await api("POST", `/v1/experts/${expert.id}/${verb}`);
    notify(`Expert ${expert.name} is ${change.expert.status}; ${change.changed_edit_ids.length} edit(s) now ${change.edit_status.replace("_", " ")}.`);
    await renderExperts();
  });
}

// --- playground ----------------------------------------------------------------------------
function verdict(value, threshold) {
  if (value === null || value === undefined) return "—";
  if (threshold === null || threshold === undefined) return fixed(value);
  const passes = value >= threshold;
  return h("span", {}, `${fixed(value)} `, h("span", { class: passes ? "pass" : "fail" }, passes ? `≥ ${fixed(threshold)}: passes` : `< ${fixed(threshold)}: below`));
}

async function compare(prompt, maxNewTokens) {
  const result = await api("POST", "/v1/generate/compare", { prompt, max_new_tokens: maxNewTokens });
  const edited = result.edited;
  $("#base-text").textContent = result.base.text;
  $("#edited-text").textContent = edited.text;
  const t = result.thresholds;
  const facts = [
    ["Answered by", edited.expert ? `expert ${edited.expert.name} (#${edited.expert.id})` : "the base model: no expert passed the gate"],
    ["Changed", result.changed ? "yes: the edited stack answers differently" : "no: both answers are the same"],
    // An edit with a subject fires on its subject match (and a lower sentence floor), not the gate.
    edited.subject_score === null
      ? ["Route score", verdict(edited.route_score, t.gate)]
      : ["Route score", h("span", {}, verdict(edited.route_score, t.sentence_floor), " (the floor for an edit with a subject; the gate is ", fixed(t.gate), ")")],
    ["Nearest edit", edited.nearest_edit_id ? `#${edited.nearest_edit_id}` : "—"],
    ["Subject match", edited.subject_score === null ? (t.subject === null ? "subject keys off" : "— (only for an edit with a subject that served)") : verdict(edited.subject_score, t.subject)],
    ["Relation match", edited.relation_score === null ? "—" : verdict(edited.relation_score, t.relation)],
    ["Whole-subject match", edited.span_score == null ? "—" : verdict(edited.span_score, t.span)],
  ];
  $("#compare-why").replaceChildren(...facts.flatMap(([name, value]) => [h("dt", {}, name), h("dd", { "data-fact": name }, value)]));
  $("#compare-result").hidden = false;
  if (edited.nearest_edit_id) {
    try {
      const edit = await api("GET", `/v1/edits/${edited.nearest_edit_id}`);
      $('[data-fact="Nearest edit"]').textContent = `#${edit.id}: ${edit.prompt} → ${edit.target} (${edit.status.replace("_", " ")})`;
    } catch {
      // a key without the read scope still sees the id
    }
  }
}

async function renderScores() {
  const recent = await api("GET", "/v1/route-scores?limit=500");
  histogram($("#scores-chart"), recent.items, recent.thresholds.gate, recent.thresholds.sentence_floor);
}

function setUpPlayground() {
  $("#compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const prompt = $("#compare-prompt").value;
    const tokens = Number($("#compare-tokens").value);
    const button = event.target.querySelector("button");
    button.disabled = true;
    notify("Generating…");
    attempt(async () => {
      clearProblem();
      await compare(prompt, tokens);
      notify("Compared.");
      await renderScores();
    }).finally(() => {
      button.disabled = false;
    });
  });
}

// --- training ------------------------------------------------------------------------------
function runRow(run) {
  const progress = h("progress", { max: Math.max(1, run.edits_total), value: run.edits_done, "aria-label": `Run ${run.id}: ${run.edits_done} of ${run.edits_total} edits` });
  const steps = run.steps_planned ? `${run.steps_done}/${run.steps_planned} steps` : `${run.steps_done} steps`;
  const time = run.status === "running" && run.eta_s !== null ? `${fixed(run.duration_s, 0)} s, about ${fixed(run.eta_s, 0)} s left` : run.duration_s !== null ? `${fixed(run.duration_s, 1)} s` : "—";
  return h("tr", { "data-run-id": run.id },
    cell("Run", `#${run.id} (${run.trigger}, ${run.actor})`),
    cell("Status", statusBadge(run.status), run.error ? h("div", { class: "muted" }, run.error) : null),
    cell("Progress", h("span", {}, progress, ` ${run.edits_done}/${run.edits_total} edits, ${steps}`)),
    cell("Loss", fixed(run.current_loss, 3)),
    cell("Time", time),
    cell("Experts", run.expert_ids.length ? run.expert_ids.map((id) => `#${id}`).join(", ") : "—"),
  );
}

const runs = new Map();

async function renderTraining() {
  const listed = (await api("GET", "/v1/training-runs?limit=20")).items;
  runs.clear();
  for (const run of listed) runs.set(run.id, run);
  fill($("#runs-table tbody"), listed, () => {
    const rows = listed.map(runRow);
    if (rows.length === 0) rows.push(h("tr", {}, h("td", { colspan: 6 }, "No training runs yet.")));
    return rows;
  });
}

// A training_run.progress event: the fields that move, merged into the run as last listed.
function updateRun(progress) {
  const row = document.querySelector(`#runs-table tr[data-run-id="${progress.id}"]`);
  const run = runs.get(progress.id);
  if (!row || !run) return scheduleRender();
  const merged = { ...run, ...progress };
  runs.set(progress.id, merged);
  row.replaceWith(runRow(merged));
  $("#runs-table tbody").signature = null; // the rows no longer show the list as fetched
}

async function submitEdits(body, what) {
  const accepted = await api("POST", "/v1/edits", body);
  notify(`Submitted ${what}: ${accepted.ids.map((id) => `#${id}`).join(", ")} (${accepted.status}). Start a training run to apply ${accepted.ids.length === 1 ? "it" : "them"}.`);
  return accepted;
}

function parseLines(text) {
  const edits = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    try {
      edits.push(JSON.parse(line));
    } catch (err) {
      throw new ApiError(422, "invalid_input", `line ${i + 1} is not JSON: ${err.message}`);
    }
  });
  if (edits.length === 0) throw new ApiError(422, "invalid_input", "no edit given: paste one JSON object a line");
  return edits;
}

function setUpTraining() {
  $("#edit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const edit = { prompt: form.get("prompt"), target: form.get("target") };
    if (form.get("subject").trim()) edit.subject = form.get("subject").trim();
    const rephrases = form.get("rephrases").split("\n").map((l) => l.trim()).filter(Boolean);
    if (rephrases.length) edit.rephrases = rephrases;
    attempt(async () => {
      clearProblem();
      await submitEdits(edit, "edit");
      event.target.reset();
    });
  });
  $("#lines-form").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      clearProblem();
      await submitEdits(parseLines($("#edit-lines").value), "edits");
      event.target.reset();
    });
  });
  $("#start-run").addEventListener("click", () =>
    attempt(async () => {
      clearProblem();
      const run = await api("POST", "/v1/training-runs");
      notify(`Training run #${run.id} is ${run.status}, with ${run.edits_total} edit(s).`);
      await renderTraining();
    }),
  );
}

// --- live events (GET /v1/events, read with fetch so the key goes in a header) ---------------
const events = {
  controller: null,
  lastId: null,
  retry: null,
  restart() {
    if (this.controller) this.controller.abort();
    clearTimeout(this.retry);
    this.controller = new AbortController();
    this.read(this.controller.signal);
  },
  state(text) {
    $("#stream-state").textContent = `Live updates: ${text}`;
  },
  async read(signal) {
    const params = this.lastId === null ? "" : `?after=${this.lastId}`;
    try {
      const response = await fetch(`/v1/events${params}`, { headers: headers({ Accept: "text/event-stream" }), signal });
      if (!response.ok) {
        this.state(response.status === 401 || response.status === 403 ? "off (the API key cannot read events)" : `off (HTTP ${response.status})`);
        if (response.status === 401 || response.status === 403) return;
        throw new Error(`HTTP ${response.status}`);
      }
      this.state("on");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    if (signal.aborted) return;
    this.state("reconnecting");
    this.retry = setTimeout(() => this.restart(), 2000);
  },
  dispatch(block) {
    let type = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (!data.length) return;
    const payload = JSON.parse(data.join("\n"));
    if (id !== null) this.lastId = Number(id);
    if (type === "training_run.progress") {
      if (current() === "training") updateRun(payload);
      return;
    }
    logEvent(type, payload);
    scheduleRender();
  },
};

function logEvent(type, event) {
  const about = [event.edit_id && `edit #${event.edit_id}`, event.expert_id && `expert #${event.expert_id}`, event.training_run_id && `run #${event.training_run_id}`]
    .filter(Boolean)
    .join(", ");
  const log = $("#event-log");
  log.prepend(h("li", {}, `${new Date(event.at).toLocaleTimeString()} ${type}${about ? ` (${about})` : ""} by ${event.actor}`));
  while (log.childElementCount > 50) log.lastChild.remove();
}

// --- pages ---------------------------------------------------------------------------------
const renderers = { edits: renderEdits, experts: renderExperts, playground: renderScores, training: renderTraining };
let pending = null;

function current() {
  const page = location.hash.replace("#", "");
  return PAGES.includes(page) ? page : "edits";
}

function scheduleRender() {
  clearTimeout(pending);
  pending = setTimeout(() => attempt(renderers[current()]), 300);
}

function render() {
  const page = current();
  for (const name of PAGES) $(`#page-${name}`).hidden = name !== page;
  for (const link of document.querySelectorAll(".top nav a")) {
    if (link.getAttribute("href") === `#${page}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · lemoe console`;
  return attempt(renderers[page]);
}

window.addEventListener("hashchange", () => {
  notify("");
  clearProblem();
  render();
  $("#main").focus();
});

document.addEventListener("DOMContentLoaded", () => {
  setUpKey();
  setUpEdits();
  setUpPlayground();
  setUpTraining();
  render();
  events.restart();
});
