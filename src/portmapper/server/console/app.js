/*
 * The portmapper dashboard.  Reads the admin JSON API about once a second
 * (the next read starts only after the last one ended, so a slow server is
 * never sent a pile of requests) and shows mappings, clients, open channels
 * and history; creates, edits (target, tag, policies) and deletes mappings,
 * kicks clients, closes channels, issues credentials (showing each token
 * once, never stored) and revokes them.  Each mapping's refused connections
 * come from GET /metrics (portmapper_refusals_total).
 *
 * Plain DOM, no framework.  Every value from the API enters the page as
 * text (textContent, text nodes), never as HTML.  Tables are keyed: a row is
 * built once and later only its cells' text changes, so buttons, checkboxes
 * and confirmations survive the refresh.
 */
"use strict";

const REFRESH_MS = 1000;          // pause between the end of one refresh and the next
const REQUEST_TIMEOUT_MS = 10000;
const ROW_MESSAGE_MS = 10000;     // how long a row action's error stays
const DETAIL_LIMIT = 20;          // channels whose details (speeds, totals) each refresh fetches
const SPARK_SECONDS = 180;        // longest span of a client's sparkline
const SPARK_SAMPLES = 400;        // and most samples it keeps
const TOKEN_KEY = "portmapper.admin-token";
const MiB = 1048576;

const $ = (selector, root = document) => root.querySelector(selector);

// -- the API ---------------------------------------------------------------

class ApiError extends Error {}     // the API answered with a failure; the message is its reason
class Unreachable extends Error {}  // no answer at all
class NeedToken extends Error {}    // 401: the admin token is missing or wrong

let token = sessionStorage.getItem(TOKEN_KEY);

/**
 * `method` on `path` with `params` in the query (empty ones left out unless
 * `keepEmpty`, as PATCH needs to remove a policy); the JSON answer, or with
 * `text` the answer's text.
 */
async function api(method, path, params = {}, { keepEmpty = false, text = false } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && (keepEmpty || value !== "")) url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(url, {
      method, headers, cache: "no-store", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (error) {
    throw new Unreachable(error.name === "TimeoutError"
      ? "The server did not answer in time." : "The server is not answering.");
  }
  if (text && response.ok) return response.text();
  let body;
  try {
    body = await response.json();
  } catch (error) {
    throw new ApiError(`The server answered ${response.status} without JSON.`);
  }
  if (response.status === 401) throw new NeedToken(body.reason || "The admin token is needed.");
  if (!response.ok || body.result === "failed") {
    throw new ApiError(body.reason || `The server answered ${response.status}.`);
  }
  return body;
}

// -- DOM and formatting ----------------------------------------------------

/** An element with attributes ("on..." ones are listeners) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function size(bytes) {
  if (typeof bytes !== "number" || Number.isNaN(bytes)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i += 1; }
  const digits = i === 0 ? 0 : bytes < 10 ? 2 : bytes < 100 ? 1 : 0;
  return `${bytes.toFixed(digits)} ${units[i]}`;
}

/** Total of direction "recv" or "send": the exact byte count where the API gives it. */
const total = (v, dir) => size(v[`${dir}_bytes`] ?? v[`${dir}_flow_statistics`] * MiB);
const speed = (mbPerSecond) => (typeof mbPerSecond === "number" ? `${size(mbPerSecond * MiB)}/s` : "—");
const address = (ip, port) => (ip === undefined ? "—" : String(ip).includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`);

function age(seconds) {
  if (typeof seconds !== "number") return "—";
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24;
  const m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

const clock = () => new Date().toLocaleTimeString();

/**
 * A table whose rows are keyed.  A column is {id, label, title, num} and either
 * text(item) (the cell's text, with cls(item) an extra class) or make(td, item)
 * (builds the cell once) and sync(td, item) (updates it on each refresh).
 * Each row keeps its latest item as row.item.
 */
class LiveTable {
  constructor(table, columns, keyOf, emptyText) {
    this.columns = columns;
    this.keyOf = keyOf;
    this.rows = new Map();
    table.createTHead().append(el("tr", {}, ...columns.map(
      (c) => el("th", { class: c.num ? "num" : "", title: c.title || "" }, c.label || ""))));
    this.body = table.createTBody();
    this.empty = el("tr", { class: "empty" }, el("td", { colspan: columns.length }, emptyText));
    this.body.append(this.empty);
  }

  update(items) {
    const seen = new Set();
    let previous = null;
    for (const item of items) {
      const key = String(this.keyOf(item));
      seen.add(key);
      let row = this.rows.get(key);
      if (!row) {
        row = el("tr", { "data-key": key });
        row.item = item;
        for (const c of this.columns) {
          const td = el("td", { "data-col": c.id });
          if (c.make) c.make(td, item);
          row.append(td);
        }
        this.rows.set(key, row);
      }
      row.item = item;
      this.columns.forEach((c, i) => {
        const td = row.cells[i];
        if (c.text) {
          setText(td, c.text(item));
          const cls = [c.num ? "num" : "", c.cls ? c.cls(item) : ""].join(" ").trim();
          if (td.className !== cls) td.className = cls;
        }
        if (c.sync) c.sync(td, item);
      });
      const next = previous ? previous.nextSibling : this.body.firstChild;
      if (row !== next) this.body.insertBefore(row, next);
      previous = row;
    }
    for (const [key, row] of this.rows) {
      if (!seen.has(key)) { row.remove(); this.rows.delete(key); }
    }
    this.empty.hidden = items.length > 0;
  }
}

/** Run an action from a button: disabled meanwhile, its failure in words in `message`. */
async function act(button, message, work) {
  button.disabled = true;
  message.className = "message";
  setText(message, "");
  try {
    const done = await work();
    if (typeof done === "string") setText(message, done);
    refreshSoon();
  } catch (error) {
    message.className = "message error";
    setText(message, error.message);
    if (error instanceof NeedToken) askToken();
  } finally {
    button.disabled = false;
  }
}

/**
 * A cell with one action button and, beside it, the action's error (for a
 * while, or until clicked).  With `confirm(item)`, a first click asks that
 * question in the cell and only "Yes" runs `run(item)`.
 */
function actionCell(label, run, confirm) {
  return (td) => {
    const message = el("span", { class: "message", title: "Click to dismiss" });
    const button = el("button", { type: "button", class: "danger small", "data-action": label.toLowerCase() }, label);
    const question = el("span", { class: "confirm", hidden: "" });
    const item = () => td.parentElement.item;
    let timer = 0;
    const go = async () => {
      clearTimeout(timer);
      await act(button, message, () => run(item()));
      timer = setTimeout(() => setText(message, ""), ROW_MESSAGE_MS);
    };
    message.addEventListener("click", () => setText(message, ""));
    const ask = (yes) => { question.hidden = !yes; button.hidden = yes; };
    button.addEventListener("click", () => {
      if (!confirm) { go(); return; }
      question.replaceChildren(
        el("span", {}, confirm(item())),
        el("button", { type: "button", class: "danger small", "data-action": "yes", onclick: () => { ask(false); go(); } }, "Yes"),
        el("button", { type: "button", class: "small", "data-action": "no", onclick: () => ask(false) }, "Cancel"));
      ask(true);
    });
    td.append(button, question, message);
  };
}

// -- what the page knows ---------------------------------------------------

const data = {
  clientPort: null,
  mappings: [],        // [{port, value}]
  clients: [],         // [{id, value}]
  credentials: [],     // [{id, value}] from /credential: never a token
  channels: [],        // [{id, port, value}] from /channel, sorted by port then id
  details: new Map(),  // channel id -> /channel?channel_id= answer
  samples: new Map(),  // client id -> [{t, recv, send}] for the sparklines
  openByPort: new Map(), // public port -> open channels
  refusals: new Map(), // public port -> {reason: connections refused at accept since the server started}
  history: [],
  historyFor: null,    // the historyQuery() that `history` answers
  nextBefore: null,
};
const problems = { mappings: "", clients: "", credentials: "", channels: "", history: "" };
const view = {
  channelPort: "",                 // channels panel filter
  selected: new Set(),             // channel ids ticked
  kind: "channel",                 // history shown: "channel" or "client"
  filters: { limit: "25" },        // history filters applied
  before: null,                    // history page: null for the newest
  newer: [],                       // `before` of the pages before this one
};

const historyQuery = () => JSON.stringify([view.kind, view.filters, view.before]);
const visibleChannels = () => data.channels.filter((c) => !view.channelPort || c.port === view.channelPort);

async function load(panel, work) {
  try {
    await work();
    problems[panel] = "";
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    problems[panel] = `Could not load: ${error.message}`;
  }
}

async function loadMappings() {
  const [answer, metrics] = await Promise.all([
    api("GET", "port_mapper"), api("GET", "metrics", {}, { text: true })]);
  data.mappings = Object.entries(answer).map(([port, value]) => ({ port, value }));
  data.refusals = refusalsOf(metrics);
}

/** Public port -> {reason: count} of the portmapper_refusals_total samples in Prometheus `text`. */
function refusalsOf(text) {
  const refusals = new Map();
  for (const [, port, reason, count] of text.matchAll(
    /^portmapper_refusals_total\{port="(\d+)",reason="([^"]*)"\} (\S+)$/gm)) {
    if (!refusals.has(port)) refusals.set(port, {});
    refusals.get(port)[reason] = Number(count);
  }
  return refusals;
}

async function loadCredentials() {
  const answer = await api("GET", "credential");
  data.credentials = Object.entries(answer).map(([id, value]) => ({ id, value }));
}

async function loadClients() {
  const answer = await api("GET", "client_connection");
  data.clients = Object.entries(answer).map(([id, value]) => ({ id, value }));
  const now = Date.now() / 1000;
  const samples = new Map();
  for (const { id, value } of data.clients) {
    const kept = (data.samples.get(id) || []).filter((s) => s.t > now - SPARK_SECONDS).slice(1 - SPARK_SAMPLES);
    kept.push({ t: now, recv: value.recv_real_time_speed || 0, send: value.send_real_time_speed || 0 });
    samples.set(id, kept);
  }
  data.samples = samples;
}

async function loadChannels() {
  const answer = await api("GET", "channel");
  data.channels = Object.entries(answer).flatMap(
    ([port, list]) => list.map((value) => ({ id: String(value.channel_id), port, value })));
  data.openByPort = new Map(Object.entries(answer).map(([port, list]) => [port, list.length]));
  const wanted = visibleChannels().slice(0, DETAIL_LIMIT);
  const answers = await Promise.allSettled(wanted.map((c) => api("GET", "channel", { channel_id: c.id })));
  const details = new Map();
  answers.forEach((outcome, i) => {
    const id = wanted[i].id;
    if (outcome.status === "fulfilled") details.set(id, outcome.value[id]);
    else if (!(outcome.reason instanceof ApiError)) throw outcome.reason;  // a 404: it just closed
  });
  data.details = details;
}

async function loadHistory() {
  const query = historyQuery();
  const filters = { ...view.filters, before: view.before };
  if (view.kind === "client") { delete filters.port; delete filters.channel_id; }
  const answer = await api("GET", `${view.kind}_history`, filters);
  data.history = answer.history;
  data.nextBefore = answer.next_before;
  data.historyFor = query;
}

// -- panels ----------------------------------------------------------------

const MAPPING_FIELDS = new Set(["ip", "port", "tag"]);

/** A mapping policy in words; one the page does not know as name=value. */
const POLICY_WORDS = {
  allow: (v) => `users from ${v.split(",").join(", ")}`,
  proxy_protocol: (v) => `PROXY protocol ${v}`,
  max_channels: (v) => `at most ${v} channel${v === 1 ? "" : "s"}`,
  rate_limit: (v) => `${v} MB/s each way`,
  balance: (v) => `balance: ${v.replace(/_/g, " ")}`,
};

function policyText(name, value) {
  if (POLICY_WORDS[name]) return POLICY_WORDS[name](value);
  return `${name}=${typeof value === "object" ? JSON.stringify(value) : value}`;
}

/** "3 denied, 1 limit": the port's refused connections, or "—". */
function refusedText(port) {
  const counts = Object.entries(data.refusals.get(port) || {}).filter(([, n]) => n > 0);
  return counts.length ? counts.map(([reason, n]) => `${n} ${reason}`).join(", ") : "—";
}

const mappingTable = new LiveTable($("#mappings"), [
  { id: "port", label: "Public port", text: (m) => m.port },
  { id: "target", label: "Target", text: (m) => address(m.value.ip, m.value.port) },
  { id: "tag", label: "Client tag", text: (m) => m.value.tag },
  {
    id: "policies", label: "Policies", title: "Any other setting the mapping carries",
    sync: (td, m) => {
      const extra = Object.entries(m.value).filter(([name]) => !MAPPING_FIELDS.has(name));
      const shown = JSON.stringify(extra);
      if (td.dataset.shown === shown) return;
      td.dataset.shown = shown;
      td.replaceChildren(...(extra.length ? extra.map(([name, value]) => el(
        "span", { class: "chip", "data-policy": name, title: name }, policyText(name, value))) : ["—"]));
    },
  },
  { id: "open", label: "Open channels", num: true, text: (m) => String(data.openByPort.get(m.port) ?? 0) },
  {
    id: "refused", label: "Refused", num: true, text: (m) => refusedText(m.port),
    title: "Users' connections closed at accept since the server started: no client, denied (not in allow), limit (max_channels)",
  },
  {
    id: "actions", label: "",
    make: (td) => {
      td.append(el("button", { type: "button", class: "small", "data-action": "edit",
        onclick: () => editMapping(td.parentElement.item) }, "Edit"), " ");
      actionCell("Delete", (m) => api("DELETE", "port_mapper", { port: m.port }),
        (m) => `Stop listening on ${m.port} and close its channels?`)(td);
    },
  },
], (m) => m.port, "No port mappings yet: create one above.");

const clientTable = new LiveTable($("#clients"), [
  { id: "id", label: "Client", text: (c) => c.id },
  { id: "tag", label: "Tag", text: (c) => c.value.tag },
  { id: "address", label: "Address", text: (c) => address(c.value.ip, c.value.port) },
  { id: "state", label: "State", text: (c) => c.value.state, cls: (c) => `state ${c.value.state}` },
  { id: "age", label: "Linked for", num: true, text: (c) => age(c.value.duration_time) },
  { id: "recv", label: "Received", num: true, title: "From the client, over its link", text: (c) => total(c.value, "recv") },
  { id: "send", label: "Sent", num: true, title: "To the client, over its link", text: (c) => total(c.value, "send") },
  { id: "recv_speed", label: "Receiving", num: true, title: "From the client, now", text: (c) => speed(c.value.recv_real_time_speed) },
  { id: "send_speed", label: "Sending", num: true, title: "To the client, now", text: (c) => speed(c.value.send_real_time_speed) },
  {
    id: "sparkline", label: "Recent speed",
    title: `Receiving (blue) and sending (orange) while this page watched, up to ${SPARK_SECONDS / 60} minutes`,
    make: (td) => td.append(sparkline()), sync: (td, c) => drawSparkline(td.firstChild, data.samples.get(c.id) || []),
  },
  { id: "credential", label: "Credential", title: "The credential it linked with, or the shared token",
    text: (c) => (c.value.credential_id == null ? "shared token" : String(c.value.credential_id)) },
  { id: "actions", label: "", make: actionCell("Kick", (c) => api("DELETE", "client_connection", { client_id: c.id })) },
], (c) => c.id, "No client is linked.");

const credentialTable = new LiveTable($("#credentials"), [
  { id: "id", label: "Credential", text: (c) => c.id },
  { id: "name", label: "Name", text: (c) => c.value.name ?? "—" },
  { id: "tag", label: "Tag", text: (c) => c.value.tag },
  { id: "created", label: "Issued", text: (c) => c.value.created_time },
  { id: "used", label: "Last used", text: (c) => c.value.last_used_time ?? "never" },
  { id: "clients", label: "Clients", text: (c) => c.value.client_ids.join(", ") || "—" },
  {
    id: "actions", label: "",
    make: actionCell("Revoke", (c) => api("DELETE", "credential", { credential_id: c.id }),
      (c) => `Revoke credential ${c.id}, dropping its clients and refusing it from now on?`),
  },
], (c) => c.id, "No credential issued: clients use the shared token.");

const SVG = "http://www.w3.org/2000/svg";
const SPARK_W = 140, SPARK_H = 28;

function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
  svg.setAttribute("width", SPARK_W);
  svg.setAttribute("height", SPARK_H);
  svg.setAttribute("class", "spark");
  for (const cls of ["base", "recv area", "send area", "recv", "send"]) {
    const shape = document.createElementNS(SVG, cls.endsWith("area") ? "polygon" : "polyline");
    shape.setAttribute("class", cls);
    svg.append(shape);
  }
  svg.append(document.createElementNS(SVG, "title"));
  svg.firstChild.setAttribute("points", `0,${SPARK_H - 0.5} ${SPARK_W},${SPARK_H - 0.5}`);
  return svg;
}

/**
 * Plot the speeds the page has seen, at most SPARK_SECONDS of them, across
 * the whole width, scaled to their peak (at least 1 KiB/s).
 */
function drawSparkline(svg, samples) {
  const now = Date.now() / 1000;
  const span = Math.max(1, now - (samples.length ? samples[0].t : now));
  const peak = Math.max(1 / 1024, ...samples.flatMap((s) => [s.recv, s.send]));
  const x = (t) => (SPARK_W * (1 - (now - t) / span)).toFixed(1);
  const y = (v) => (SPARK_H - 1 - (SPARK_H - 4) * (v / peak)).toFixed(1);
  const [, recvArea, sendArea, recv, send, title] = svg.childNodes;
  for (const [dir, line, area] of [["recv", recv, recvArea], ["send", send, sendArea]]) {
    const points = samples.map((s) => `${x(s.t)},${y(s[dir])}`);
    line.setAttribute("points", points.join(" "));
    const floor = samples.length ? [`${x(samples.at(-1).t)},${SPARK_H}`, `${x(samples[0].t)},${SPARK_H}`] : [];
    area.setAttribute("points", [...points, ...floor].join(" "));
  }
  svg.dataset.samples = samples.length;
  setText(title, `Receiving (blue) and sending (orange) over the last ${age(Math.round(span))}; peak ${speed(peak)}`);
}

const selectAll = el("input", { type: "checkbox", title: "Select every channel shown" });
selectAll.addEventListener("change", () => {
  for (const c of visibleChannels()) {
    if (selectAll.checked) view.selected.add(c.id); else view.selected.delete(c.id);
  }
  renderChannels();
});

const detail = (c) => data.details.get(c.id) || {};

const channelTable = new LiveTable($("#channels"), [
  {
    id: "select", label: selectAll,
    make: (td) => {
      const box = el("input", { type: "checkbox", title: "Select for closing" });
      box.addEventListener("change", () => {
        const id = td.parentElement.item.id;
        if (box.checked) view.selected.add(id); else view.selected.delete(id);
        renderChannels();
      });
      td.append(box);
    },
    sync: (td, c) => { td.firstChild.checked = view.selected.has(c.id); },
  },
  { id: "id", label: "Channel", text: (c) => c.id },
  { id: "port", label: "Public port", text: (c) => c.port },
  { id: "user", label: "User", text: (c) => address(c.value.ip, c.value.port) },
  { id: "state", label: "State", text: (c) => c.value.state, cls: (c) => `state ${c.value.state}` },
  { id: "client", label: "Client", text: (c) => String(detail(c).client_id ?? "—") },
  { id: "target", label: "Target", text: (c) => address(detail(c).target_ip, detail(c).target_port) },
  { id: "age", label: "Open for", num: true, text: (c) => age(detail(c).duration_time) },
  { id: "recv", label: "Received", num: true, title: "From the public user", text: (c) => total(detail(c), "recv") },
  { id: "send", label: "Sent", num: true, title: "To the public user", text: (c) => total(detail(c), "send") },
  { id: "recv_speed", label: "Receiving", num: true, title: "From the public user, now", text: (c) => speed(detail(c).recv_real_time_speed) },
  { id: "send_speed", label: "Sending", num: true, title: "To the public user, now", text: (c) => speed(detail(c).send_real_time_speed) },
  { id: "actions", label: "", make: actionCell("Close", (c) => api("DELETE", "channel", { channel_id: c.id })) },
], (c) => c.id, "No open channel.");

const HISTORY_TRAFFIC = [
  { id: "opened", label: "Opened", text: (h) => h.init_time },
  { id: "closed", label: "Closed", text: (h) => h.close_time },
  { id: "duration", label: "Lasted", num: true, text: (h) => age(h.duration_time) },
  { id: "recv", label: "Received", num: true, text: (h) => total(h, "recv") },
  { id: "send", label: "Sent", num: true, text: (h) => total(h, "send") },
  { id: "reason", label: "Why it closed", text: (h) => h.close_reason, cls: () => "reason" },
];

const historyTables = {
  channel: new LiveTable($("#channel-history"), [
    { id: "id", label: "Channel", text: (h) => String(h.channel_id) },
    { id: "port", label: "Public port", text: (h) => String(h.port) },
    { id: "user", label: "User", text: (h) => address(h.ip, h.user_port) },
    { id: "client", label: "Client", text: (h) => String(h.client_id ?? "—") },
    { id: "target", label: "Target", text: (h) => address(h.target_ip, h.target_port) },
    ...HISTORY_TRAFFIC,
  ], (h) => h.channel_id, "No closed channel matches."),
  client: new LiveTable($("#client-history"), [
    { id: "id", label: "Client", text: (h) => String(h.client_id) },
    { id: "tag", label: "Tag", text: (h) => h.tag },
    { id: "address", label: "Address", text: (h) => address(h.ip, h.port) },
    ...HISTORY_TRAFFIC,
  ], (h) => h.client_id, "No closed client link matches."),
};

// -- drawing ---------------------------------------------------------------

function renderChannels() {
  const shown = visibleChannels();
  const ids = new Set(data.channels.map((c) => c.id));
  for (const id of view.selected) if (!ids.has(id)) view.selected.delete(id);
  channelTable.update(shown);
  const picked = view.selected.size;
  const button = $("#close-selected");
  setText(button, picked ? `Close ${picked} selected` : "Close selected");
  button.disabled = picked === 0;
  selectAll.checked = shown.length > 0 && shown.every((c) => view.selected.has(c.id));
  const note = $("#detail-note");
  note.hidden = shown.length <= DETAIL_LIMIT;
  setText(note, `Speeds and totals are fetched for the first ${DETAIL_LIMIT} of the ${shown.length} `
    + "channels shown; choose a public port to see others.");
}

function renderPortChoice() {
  const select = $("#channel-port");
  const ports = data.mappings.map((m) => m.port);
  if (view.channelPort && !ports.includes(view.channelPort)) view.channelPort = "";
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join() !== ports.join()) {
    select.replaceChildren(select.options[0], ...ports.map((p) => el("option", { value: p }, p)));
  }
  select.value = view.channelPort;
}

function render() {
  setText($("#client-port"), data.clientPort === null ? "…" : String(data.clientPort));
  for (const [panel, problem] of Object.entries(problems)) {
    const node = $(`#${panel}-panel .problem`);
    setText(node, problem);
    node.hidden = !problem;
  }
  mappingTable.update(data.mappings);
  clientTable.update(data.clients);
  credentialTable.update(data.credentials);
  renderPortChoice();
  renderChannels();
  const current = data.historyFor === historyQuery();
  for (const [kind, table] of Object.entries(historyTables)) {
    table.update(current && kind === view.kind ? data.history : []);
  }
  $("#newer").disabled = view.newer.length === 0;
  $("#older").disabled = !current || data.nextBefore === null;
  setText($("#page"), view.newer.length ? `page ${view.newer.length + 1}` : "newest");
  const sum = (dir) => data.clients.reduce((acc, c) => acc + (c.value[`${dir}_real_time_speed`] || 0), 0);
  setText($("#tile-mappings"), String(data.mappings.length));
  setText($("#tile-clients"), String(data.clients.length));
  setText($("#tile-channels"), String(data.channels.length));
  setText($("#tile-in"), speed(sum("recv")));
  setText($("#tile-out"), speed(sum("send")));
}

function showStatus(text, cls) {
  const status = $("#status");
  setText(status, text);
  status.className = `status ${cls}`;
}

let downSince = null;

function showDown(error) {
  const banner = $("#banner");
  if (!error) {
    downSince = null;
    banner.hidden = true;
    $("#main").classList.remove("stale");
    showStatus(`live · ${clock()}`, "ok");
    return;
  }
  downSince = downSince || clock();
  setText(banner, `${error.message.replace(/\.$/, "")} (since ${downSince}). `
    + "The page keeps trying and comes back by itself; until then it shows what it saw last.");
  banner.hidden = false;
  $("#main").classList.add("stale");
  showStatus("server not answering", "down");
}

// -- the refresh loop ------------------------------------------------------

const loop = { timer: 0, busy: false, again: false };

/** Refresh now, or right after the refresh under way. */
function refreshSoon() {
  if (loop.busy) loop.again = true;
  else tick();
}

async function tick() {
  clearTimeout(loop.timer);
  loop.busy = true;
  loop.again = false;
  let go = true;
  try {
    go = await refresh();
  } catch (error) {  // a fault of this page: say so, and keep going
    showDown(new Error(`The dashboard failed: ${error.message}`));
  }
  loop.busy = false;
  if (loop.again) tick();
  else if (go) loop.timer = setTimeout(tick, REFRESH_MS);
}

/** One read of everything; false when it must wait for the admin token. */
async function refresh() {
  const outcomes = await Promise.allSettled([
    data.clientPort === null ? api("GET", "client_port").then((a) => { data.clientPort = a.client_port; }) : null,
    load("mappings", loadMappings),
    load("clients", loadClients),
    load("credentials", loadCredentials),
    load("channels", loadChannels),
    load("history", loadHistory),
  ]);
  const failures = outcomes.filter((o) => o.status === "rejected").map((o) => o.reason);
  if (failures.some((e) => e instanceof NeedToken)) {
    askToken();
    return false;
  }
  const down = failures.find((e) => e instanceof Unreachable);
  if (down) data.clientPort = null;
  showDown(down || failures.find((e) => !(e instanceof ApiError)));
  render();
  return true;
}

// -- the admin token -------------------------------------------------------

function askToken() {
  const panel = $("#token-panel");
  if (!panel.hidden) return;
  setText($("#token-error"), token ? "The server refused this token; it is the server's --admin-token." : "");
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  panel.hidden = false;
  $("#main").hidden = true;
  $("#forget-token").hidden = true;
  showStatus("admin token needed", "wait");
  $("#token-input").focus();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("#token-input").value.trim();
  $("#token-input").value = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token-panel").hidden = true;
  $("#main").hidden = false;
  $("#forget-token").hidden = false;
  refreshSoon();
});

$("#forget-token").hidden = !token;
$("#forget-token").addEventListener("click", () => {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("#forget-token").hidden = true;
  refreshSoon();
});

// -- actions ---------------------------------------------------------------

$("#map-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const params = Object.fromEntries(new FormData(form));
  act(form.querySelector("button"), $("#map-message"), async () => {
    await api("POST", "port_mapper", params);
    form.reset();
    return `Port ${params.port} now maps to ${address(params.mapper_ip, params.mapper_port)}.`;
  });
});

// The edit form: PATCH sends only what the operator changed; an emptied policy is removed.
const EDIT_FIELDS = { mapper_ip: "ip", mapper_port: "port", mapper_tag: "tag" };
const EDIT_POLICIES = ["rate_limit", "max_channels", "allow", "proxy_protocol", "balance"];
let editing = null;  // the mapping {port, value} the form was filled from

function editMapping(mapping) {
  editing = mapping;
  const form = $("#edit-form");
  for (const [name, field] of Object.entries(EDIT_FIELDS)) form.elements[name].value = String(mapping.value[field]);
  for (const name of EDIT_POLICIES) form.elements[name].value = String(mapping.value[name] ?? "");
  setText($("#edit-port"), mapping.port);
  setText($("#edit-message"), "");
  form.hidden = false;
  form.elements.rate_limit.focus();
}

$("#edit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const was = (name) => String(editing.value[EDIT_FIELDS[name] || name] ?? "");
  const changes = {};
  for (const [name, value] of new FormData(form)) {
    const wanted = value.trim();
    if (wanted === was(name) || (wanted === "" && EDIT_FIELDS[name])) continue;  // target and tag stay when empty
    changes[name] = wanted;
  }
  const port = editing.port;
  act(form.querySelector("button[type=submit]"), $("#edit-message"), async () => {
    if (!Object.keys(changes).length) return "Nothing changed.";
    const answer = await api("PATCH", "port_mapper", { port, ...changes }, { keepEmpty: true });
    editing = { port, value: answer.port_mapper[port] };
    return `Port ${port} changed: ${Object.entries(changes)
      .map(([name, value]) => (value === "" ? `${name} removed` : `${name}=${value}`)).join(", ")}.`;
  });
});

$("#edit-cancel").addEventListener("click", () => {
  $("#edit-form").hidden = true;
  editing = null;
});

// The token is in the page only while its box is shown: never in `data`, never stored.
function showToken(credential) {
  setText($("#new-token-id"), String(credential.credential_id));
  $("#new-token-value").value = credential.token;
  $("#new-token").hidden = false;
  $("#new-token-value").select();
}

function hideToken() {
  $("#new-token-value").value = "";
  $("#new-token").hidden = true;
}

$("#credential-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const params = Object.fromEntries(new FormData(form));
  act(form.querySelector("button"), $("#credential-message"), async () => {
    const answer = await api("POST", "credential", params);
    form.reset();
    showToken(answer.credential);
    return `Credential ${answer.credential.credential_id} issued for tag ${answer.credential.tag}.`;
  });
});

$("#new-token-copy").addEventListener("click", async () => {
  $("#new-token-value").select();
  try {
    await navigator.clipboard.writeText($("#new-token-value").value);
    setText($("#credential-message"), "Token copied.");
  } catch (error) {
    setText($("#credential-message"), "Copy it with Ctrl+C (or ⌘C): the token is selected.");
  }
});

$("#new-token-done").addEventListener("click", hideToken);

$("#close-selected").addEventListener("click", (event) => {
  const ids = [...view.selected];
  act(event.target, $("#channels-message"), async () => {
    const outcomes = await Promise.allSettled(ids.map((id) => api("DELETE", "channel", { channel_id: id })));
    const failed = outcomes.map((o, i) => [ids[i], o]).filter(([, o]) => o.status === "rejected");
    ids.forEach((id) => view.selected.delete(id));
    if (failed.length) {
      throw new ApiError(`Closed ${ids.length - failed.length} of ${ids.length}; `
        + failed.map(([id, o]) => `channel ${id}: ${o.reason.message}`).join("; "));
    }
    return `Closed ${ids.length} channel${ids.length === 1 ? "" : "s"}.`;
  });
});

$("#channel-port").addEventListener("change", (event) => {
  view.channelPort = event.target.value;
  refreshSoon();
});

for (const tab of document.querySelectorAll("#history-panel [data-kind]")) {
  tab.addEventListener("click", () => {
    view.kind = tab.dataset.kind;
    for (const other of document.querySelectorAll("#history-panel [data-kind]")) {
      other.setAttribute("aria-selected", String(other === tab));
    }
    $("#channel-history").hidden = view.kind !== "channel";
    $("#client-history").hidden = view.kind !== "client";
    for (const name of ["port", "channel_id"]) $(`#history-form [name=${name}]`).disabled = view.kind === "client";
    view.before = null;
    view.newer = [];
    render();
    refreshSoon();
  });
}

$("#history-form").addEventListener("submit", (event) => {
  event.preventDefault();
  view.filters = Object.fromEntries(new FormData(event.target));
  view.before = null;
  view.newer = [];
  refreshSoon();
});

$("#older").addEventListener("click", () => {
  view.newer.push(view.before);
  view.before = data.nextBefore;
  refreshSoon();
});

$("#newer").addEventListener("click", () => {
  view.before = view.newer.pop() ?? null;
  refreshSoon();
});

tick();
