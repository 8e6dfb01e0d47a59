// The simplepush dashboard: polls this node's /metrics and /realstatus/ once a second
// and renders them, SimplePush and WebPush side by side. Rates come from the two latest scrapes; percentiles are estimated
// from the Prometheus histogram buckets over the last minute of scrapes. Every element
// a test reads carries its raw number in `data-value` next to the formatted text.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 60000;
const FETCH_TIMEOUT_MS = 5000;

const MEANINGS = {
  "200": "delivered live", "202": "stored for later", "400": "bad request",
  "404": "unknown endpoint", "410": "channel gone", "413": "data too large",
  "503": "unavailable",
};

/** What a WebPush push's status means (PROTOCOL.md §9). */
const WEBPUSH_MEANINGS = {
  "201": "accepted (stored or delivered)", "400": "bad request", "401": "VAPID missing or invalid",
  "403": "VAPID key not the subscription's", "404": "unknown endpoint", "410": "unsubscribed",
  "413": "body too large", "429": "channel queue full", "503": "unavailable",
};

/** What a WebPush device's ack or nack code means. */
const ANSWER_MEANINGS = {
  "ack 100": "delivered", "ack 101": "decryption failed", "ack 102": "not delivered",
  "nack 301": "handler failed", "nack 302": "handler rejected", "nack 303": "handler timed out",
};

/** Scrapes of the last minute, oldest first: {at: ms, series: [{name, labels, value}]}. */
const history = [];

/** Parses the Prometheus text format into series. */
function parseMetrics(text) {
  const series = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const label of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1]] = label[2];
    }
    series.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return series;
}

/** Sums of `name` grouped by the value of `label`, as a Map. */
function byLabel(scrape, name, label) {
  const sums = new Map();
  for (const s of scrape.series) {
    if (s.name !== name) continue;
    const key = s.labels[label] ?? "";
    sums.set(key, (sums.get(key) || 0) + s.value);
  }
  return sums;
}

/** The sum of every series called `name`. */
function total(scrape, name) {
  let sum = 0;
  for (const value of byLabel(scrape, name, "").values()) sum += value;
  return sum;
}

/** Cumulative bucket counts of histogram `name` (series matching `only`), by `le`. */
function buckets(scrape, name, only = {}) {
  const counts = new Map();
  for (const s of scrape.series) {
    if (s.name !== name + "_bucket") continue;
    if (Object.entries(only).some(([k, v]) => s.labels[k] !== v)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    counts.set(le, (counts.get(le) || 0) + s.value);
  }
  return counts;
}

/** `newer - older`, bucket by bucket (what was observed between two scrapes). */
function subtract(newer, older) {
  const out = new Map();
  for (const [le, count] of newer) out.set(le, count - (older.get(le) || 0));
  return out;
}

/** The q-quantile (seconds) of cumulative bucket counts, interpolated linearly inside
 *  the bucket it falls in, like Prometheus' histogram_quantile; null without data. */
function quantile(q, counts) {
  const bounds = [...counts.keys()].sort((a, b) => a - b);
  const all = counts.get(Infinity) || 0;
  if (all <= 0) return null;
  const rank = q * all;
  let lower = 0;
  let below = 0;
  for (const le of bounds) {
    const count = counts.get(le);
    if (count >= rank) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((rank - below) / Math.max(count - below, 1e-9));
    }
    lower = le;
    below = count;
  }
  return lower;
}

/** Per-second rate of a counter between the two latest scrapes (null until two). */
function rate(pick) {
  if (history.length < 2) return null;
  const newer = history[history.length - 1];
  const older = history[history.length - 2];
  const seconds = (newer.at - older.at) / 1000;
  const delta = pick(newer) - pick(older);
  // A negative delta is a restarted server: its counters started again from zero.
  return seconds > 0 ? Math.max(delta, 0) / seconds : null;
}

/** Cumulative bucket counts of histogram `name` (series matching `only`) observed over
 *  the last minute of scrapes, or since the server started when `sinceStart`. */
function observed(name, only, sinceStart) {
  const newest = buckets(history[history.length - 1], name, only);
  return sinceStart ? newest : subtract(newest, buckets(history[0], name, only));
}

/** Whether histogram `name` observed anything over the last minute of scrapes. */
function observedRecently(name) {
  return history.length > 1 && (observed(name, {}, false).get(Infinity) || 0) > 0;
}

function formatCount(n) {
  return n === null || n === undefined || Number.isNaN(n) ? "–" : Math.round(n).toLocaleString("en");
}

function formatRate(n) {
  if (n === null || Number.isNaN(n)) return "–";
  return n >= 100 ? Math.round(n).toLocaleString("en") : n.toFixed(1);
}

function formatSeconds(s) {
  if (s === null || Number.isNaN(s)) return "–";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

/** Shows `text` in element `id`, with the raw `value` in its data-value attribute. */
function show(id, value, text) {
  const element = document.getElementById(id);
  element.textContent = text;
  element.dataset.value = value === null || value === undefined ? "" : String(value);
}

/** A table row of cells; each cell is text or [text, value, id]. */
function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    const [text, value, id] = Array.isArray(cell) ? cell : [cell];
    td.textContent = text;
    if (value !== undefined) td.dataset.value = value === null ? "" : String(value);
    if (id) td.id = id;
    tr.append(td);
  }
  return tr;
}

/** Rows of counter `name` by `label`, sorted: the label (with its meaning from
 *  `meanings` when given), the total and the rate, in cells with ids
 *  `${prefix}-${value}-total` and `-rate`. A table without series says "none yet". */
function counterRows(now, name, label, prefix, meanings) {
  const sums = byLabel(now, name, label);
  const width = meanings ? 4 : 3;
  if (sums.size === 0) {
    const tr = row(["none yet"]);
    tr.firstChild.colSpan = width;
    return [tr];
  }
  return [...sums.keys()].sort().map((key) => {
    const r = rate((s) => byLabel(s, name, label).get(key) || 0);
    return row([
      key, ...(meanings ? [meanings[key] || ""] : []),
      [formatCount(sums.get(key)), sums.get(key), `${prefix}-${key}-total`],
      [formatRate(r), r, `${prefix}-${key}-rate`],
    ]);
  });
}

/** The WebPush figures (PROTOCOL.md §9), beside the SimplePush ones. */
function renderWebPush(now) {
  const pushes = byLabel(now, "simplepush_webpush_pushes_total", "status");
  const pushesTotal = total(now, "simplepush_webpush_pushes_total");
  const pushesRate = rate((s) => total(s, "simplepush_webpush_pushes_total"));
  show("webpush-rate", pushesRate, formatRate(pushesRate));
  show("webpush-pushes-total", pushesTotal, formatCount(pushesTotal));
  show("webpush-stored-total", pushes.get("201") || 0, formatCount(pushes.get("201") || 0));
  document.getElementById("webpush").replaceChildren(
    ...counterRows(now, "simplepush_webpush_pushes_total", "status", "webpush", WEBPUSH_MEANINGS));
  document.getElementById("webpush-encodings").replaceChildren(
    ...counterRows(now, "simplepush_webpush_encodings_total", "encoding", "webpush-encoding"));

  const vapidTotal = total(now, "simplepush_vapid_failures_total");
  const vapidRate = rate((s) => total(s, "simplepush_vapid_failures_total"));
  show("vapid-failures-total", vapidTotal, formatCount(vapidTotal));
  show("vapid-failures-rate", vapidRate, formatRate(vapidRate));
  document.getElementById("vapid-failures").replaceChildren(
    ...counterRows(now, "simplepush_vapid_failures_total", "reason", "vapid"));
  document.getElementById("message-deletes").replaceChildren(
    ...counterRows(now, "simplepush_message_deletes_total", "status", "message-deletes"));

  const notifications = total(now, "simplepush_webpush_notifications_total");
  const notificationsRate = rate((s) => total(s, "simplepush_webpush_notifications_total"));
  show("webpush-notifications-total", notifications, formatCount(notifications));
  show("webpush-notifications-rate", notificationsRate, formatRate(notificationsRate));
  const answers = [];
  for (const kind of ["ack", "nack"]) {
    const name = `simplepush_webpush_${kind}s_total`;
    const codes = byLabel(now, name, "code");
    for (const code of [...codes.keys()].sort()) {
      const r = rate((s) => byLabel(s, name, "code").get(code) || 0);
      answers.push(row([
        kind, code, ANSWER_MEANINGS[`${kind} ${code}`] || "",
        [formatCount(codes.get(code)), codes.get(code), `webpush-${kind}-${code}-total`],
        [formatRate(r), r, `webpush-${kind}-${code}-rate`],
      ]));
    }
  }
  document.getElementById("webpush-answers").replaceChildren(...answers);
  document.getElementById("webpush-commands").replaceChildren(
    ...counterRows(now, "simplepush_webpush_commands_total", "command", "webpush-commands"));
}

function renderMetrics() {
  const now = history[history.length - 1];
  show("connections", total(now, "simplepush_connections"), formatCount(total(now, "simplepush_connections")));

  const updates = byLabel(now, "simplepush_updates_total", "status");
  const updatesRate = rate((s) => total(s, "simplepush_updates_total"));
  show("updates-rate", updatesRate, formatRate(updatesRate));
  show("live-total", updates.get("200") || 0, formatCount(updates.get("200") || 0));
  document.getElementById("updates").replaceChildren(
    ...counterRows(now, "simplepush_updates_total", "status", "updates", MEANINGS));

  const commandsRate = rate((s) => total(s, "simplepush_commands_total"));
  show("commands-rate", commandsRate, formatRate(commandsRate));
  show("commands-total", total(now, "simplepush_commands_total"), formatCount(total(now, "simplepush_commands_total")));
  document.getElementById("commands").replaceChildren(
    ...counterRows(now, "simplepush_commands_total", "command", "commands"));

  renderWebPush(now);

  // Without live deliveries in the last minute, the percentiles since start say more
  // than none at all.
  const deliveryRecent = observedRecently("simplepush_delivery_seconds");
  const delivery = observed("simplepush_delivery_seconds", {}, !deliveryRecent);
  const p50 = quantile(0.5, delivery);
  const p99 = quantile(0.99, delivery);
  show("delivery-p50", p50, formatSeconds(p50));
  show("delivery-p99", p99, formatSeconds(p99));
  document.getElementById("delivery-window").textContent = deliveryRecent ? "last minute" : "since start";

  // One window for the whole table: the last minute as soon as there are two scrapes
  // (each poll of /realstatus/ makes a store call, so the window is never empty).
  const storeSinceStart = !observedRecently("simplepush_store_seconds");
  const calls = byLabel(now, "simplepush_store_seconds_count", "op");
  const errors = byLabel(now, "simplepush_store_errors_total", "op");
  document.getElementById("store-ops").replaceChildren(
    ...[...calls.keys()].sort().map((op) => {
      const r = rate((s) => byLabel(s, "simplepush_store_seconds_count", "op").get(op) || 0);
      const latency = observed("simplepush_store_seconds", { op }, storeSinceStart);
      const [q50, q99] = [quantile(0.5, latency), quantile(0.99, latency)];
      return row([
        op,
        [formatCount(calls.get(op)), calls.get(op), `store-${op}-calls`],
        [formatRate(r), r],
        [formatSeconds(q50), q50, `store-${op}-p50`],
        [formatSeconds(q99), q99, `store-${op}-p99`],
        [formatCount(errors.get(op) || 0), errors.get(op) || 0, `store-${op}-errors`],
      ]);
    }));
  document.getElementById("store-window").textContent =
    `(percentiles: ${storeSinceStart ? "since start" : "last minute"})`;
}

function renderStatus(status) {
  const store = status.store || {};
  show("store-status", store.status || "", store.status || "?");
  document.getElementById("store-status").dataset.state = store.status === "OK" ? "ok" : "error";
  show("store-backend", store.backend || "", store.backend || "?");
  const latency = typeof store.latency_ms === "number" ? store.latency_ms / 1000 : null;
  show("store-latency", latency, formatSeconds(latency));
  document.getElementById("store-error").textContent = store.error || "";

  const cluster = status.cluster;
  document.getElementById("cluster").hidden = !cluster;
  if (!cluster) return;
  show("cluster-node", cluster.node || "", cluster.node || "");
  const peers = Object.entries(cluster.peers || {}).sort(([a], [b]) => a.localeCompare(b));
  document.getElementById("cluster-peers").replaceChildren(
    ...peers.map(([node, peer]) => {
      const tr = row([node, [peer.reachable ? "yes" : "no", peer.reachable], peer.error || ""]);
      tr.dataset.peer = node;
      tr.dataset.state = peer.reachable ? "ok" : "error";
      return tr;
    }));
}

async function fetchText(url) {
  const response = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
  // /realstatus/ answers 503 with a JSON body when the store is down: still worth showing.
  if (!response.ok && response.status !== 503) throw new Error(`${url}: HTTP ${response.status}`);
  return response.text();
}

async function poll() {
  const indicator = document.getElementById("poll");
  try {
    const [metrics, status] = await Promise.all([fetchText("/metrics"), fetchText("/realstatus/")]);
    const at = performance.now();
    history.push({ at, series: parseMetrics(metrics) });
    while (history.length > 2 && at - history[0].at > WINDOW_MS) history.shift();
    renderMetrics();
    renderStatus(JSON.parse(status));
    indicator.textContent = "live · " + new Date().toLocaleTimeString("en-GB");
    indicator.dataset.state = "ok";
  } catch (error) {
    indicator.textContent = "cannot reach the server: " + error.message;
    indicator.dataset.state = "error";
  }
  setTimeout(poll, POLL_MS);
}

poll();
