// The simplepush dashboard: polls this node's /metrics and /realstatus/ once a second
// and renders them, SimplePush and WebPush side by side. Rates come from the two latest
// scrapes; percentiles are estimated from the Prometheus histogram buckets over the last
// minute of scrapes. Each poll also adds one sample to the plots of the last 15 minutes.
// Every element a test reads carries its raw number in `data-value` next to the
// formatted text.
"use strict";

const POLL_MS = 1000;
const WINDOW_MS = 60000;
const FETCH_TIMEOUT_MS = 5000;
/** The plots span 15 minutes: one sample per poll, at most this many. */
const PLOT_SPAN_MS = 15 * 60 * 1000;
const PLOT_POINTS = PLOT_SPAN_MS / POLL_MS;
/** Samples further apart than this (missed polls) are not joined by a line. */
const PLOT_GAP_MS = 2.5 * POLL_MS;
/** The latency plot's percentiles are of the deliveries in this long before each point. */
const LATENCY_WINDOW_MS = 10000;

const MEANINGS = {
  "200": "delivered live", "202": "stored for later", "400": "bad request",
  "404": "unknown endpoint", "410": "channel gone", "413": "data too large",
  "503": "unavailable",
};

/** What a WebPush push's status means (docs/protocol.md). */
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
  if (sinceStart) return newest;
  const recent = subtract(newest, buckets(history[0], name, only));
  // Counts that went down belong to a restarted server: all it has seen is recent.
  return [...recent.values()].some((count) => count < 0) ? newest : recent;
}

/** Whether histogram `name` (series matching `only`) observed anything over the last
 *  minute of scrapes. */
function observedRecently(name, only = {}) {
  return history.length > 1 && (observed(name, only, false).get(Infinity) || 0) > 0;
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

/** The WebPush figures (docs/protocol.md), beside the SimplePush ones. */
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

  renderStoreOps(now);
}

/** The store call table. Each op's percentiles are of its own calls in the last minute,
 *  or since start when it made none in that minute: one window for the whole table would
 *  leave ops that ran only before the page was opened (or a minute ago) without figures,
 *  since the store check behind each poll of /realstatus/ is always recent. */
function renderStoreOps(now) {
  const calls = byLabel(now, "simplepush_store_seconds_count", "op");
  const errors = byLabel(now, "simplepush_store_errors_total", "op");
  document.getElementById("store-ops").replaceChildren(
    ...[...calls.keys()].sort().map((op) => storeRow(op, calls.get(op), errors.get(op) || 0)));
}

/** One op's row: calls, rate, p50, p99, the calls they are of, errors. */
function storeRow(op, calls, errors) {
  const r = rate((s) => byLabel(s, "simplepush_store_seconds_count", "op").get(op) || 0);
  const callCells = [[formatCount(calls), calls, `store-${op}-calls`], [formatRate(r), r]];
  const errorCell = [formatCount(errors), errors, `store-${op}-errors`];
  if (!(calls > 0)) {
    // Listed before its first call (the server presets every op): no percentiles yet.
    const tr = row([op, ...callCells, ["no calls yet", null, `store-${op}-p50`], errorCell]);
    tr.children[3].colSpan = 3;
    tr.children[3].className = "none";
    return tr;
  }
  const recent = observedRecently("simplepush_store_seconds", { op });
  const latency = observed("simplepush_store_seconds", { op }, !recent);
  const [q50, q99] = [quantile(0.5, latency), quantile(0.99, latency)];
  return row([
    op, ...callCells,
    [formatSeconds(q50), q50, `store-${op}-p50`],
    [formatSeconds(q99), q99, `store-${op}-p99`],
    [recent ? "last minute" : "since start", recent ? "minute" : "start", `store-${op}-window`],
    errorCell,
  ]);
}

// ---- Plots of the last 15 minutes -----------------------------------------------------

/** The plots' samples, oldest first, one per poll since this page was opened, at most
 *  PLOT_POINTS: {at, connections, spLive, spStored, spErrors, wp201, wp4xx, wp5xx,
 *  p50, p99}; a rate or percentile is null where it cannot be known. */
const samples = [];

/** Each plot: its element id, caption and note, how it labels a value (with its unit),
 *  the smallest y range it shows, whether its values are whole numbers, the text it
 *  shows without points, and its series [sample field, legend label, colour]. */
const PLOTS = [
  {
    id: "plot-connections", caption: "Connections", note: "device sockets, both dialects",
    tick: formatCount, floor: 1, whole: true, empty: "waiting for the first poll",
    series: [["connections", "open", "blue"]],
  },
  {
    id: "plot-simplepush", caption: "SimplePush updates", note: "per second, by outcome",
    tick: (v) => formatTick(v) + "/s", floor: 1, empty: "waiting for a second poll",
    series: [["spLive", "200 live", "green"], ["spStored", "202 stored", "blue"],
      ["spErrors", "4xx/5xx errors", "red"]],
  },
  {
    id: "plot-webpush", caption: "WebPush pushes", note: "per second, by outcome",
    tick: (v) => formatTick(v) + "/s", floor: 1, empty: "waiting for a second poll",
    series: [["wp201", "201 accepted", "green"], ["wp4xx", "4xx refused", "orange"],
      ["wp5xx", "5xx unavailable", "red"]],
  },
  {
    id: "plot-latency", caption: "Delivery latency", note: "of the deliveries in the 10 s before each point",
    tick: formatDuration, floor: 0.001, empty: "no deliveries to show",
    series: [["p50", "p50", "blue"], ["p99", "p99", "purple"]],
  },
];

/** Sum of counter `name` over the series whose `label` passes `test`. */
function sumWhere(scrape, name, label, test) {
  let sum = 0;
  for (const [key, value] of byLabel(scrape, name, label)) if (test(key)) sum += value;
  return sum;
}

/** The rate of counter `name` over the series whose `label` passes `test`. */
function rateWhere(name, label, test) {
  return rate((s) => sumWhere(s, name, label, test));
}

/** p50 and p99 (seconds) of the deliveries in the LATENCY_WINDOW_MS before the newest
 *  scrape (less at the page's start); null without any. */
function recentDeliveryLatency() {
  const newest = history[history.length - 1];
  // The newest scrape at least the window old: the counts since it are the window's.
  let base = history[0];
  for (const scrape of history) {
    if (newest.at - scrape.at < LATENCY_WINDOW_MS) break;
    base = scrape;
  }
  if (base === newest) return [null, null];
  const counts = subtract(buckets(newest, "simplepush_delivery_seconds"),
    buckets(base, "simplepush_delivery_seconds"));
  return [quantile(0.5, counts), quantile(0.99, counts)];
}

/** Adds the newest scrape's sample to the plots' ring buffer (dropping the oldest). */
function addSample() {
  const now = history[history.length - 1];
  const updates = "simplepush_updates_total";
  const pushes = "simplepush_webpush_pushes_total";
  const [p50, p99] = recentDeliveryLatency();
  samples.push({
    at: now.at,
    connections: total(now, "simplepush_connections"),
    spLive: rateWhere(updates, "status", (status) => status === "200"),
    spStored: rateWhere(updates, "status", (status) => status === "202"),
    spErrors: rateWhere(updates, "status", (status) => status !== "200" && status !== "202"),
    wp201: rateWhere(pushes, "status", (status) => status === "201"),
    wp4xx: rateWhere(pushes, "status", (status) => status.startsWith("4")),
    wp5xx: rateWhere(pushes, "status", (status) => status.startsWith("5")),
    p50, p99,
  });
  while (samples.length > PLOT_POINTS || now.at - samples[0].at > PLOT_SPAN_MS) samples.shift();
}

/** A tick label: at most three significant digits, no trailing zeros. */
function formatTick(v) {
  return Number(v.toPrecision(3)).toLocaleString("en");
}

/** A duration in seconds as a tick label: µs, ms or s. */
function formatDuration(s) {
  if (s === 0) return "0";
  if (s < 0.001) return formatTick(s * 1e6) + " µs";
  return s < 1 ? formatTick(s * 1000) + " ms" : formatTick(s) + " s";
}

/** The smallest of 1, 2 or 5 times a power of ten that is at least `v` (and `floor`):
 *  the top of a y axis with round ticks. */
function niceMax(v, floor) {
  if (!(v > floor)) return floor;
  const power = 10 ** Math.floor(Math.log10(v));
  // Scaled to [1, 10), with a little slack so that rounding (0.3 / 0.1 = 2.9999…) stays.
  const scaled = v / power;
  const step = [1, 2, 5, 10].find((m) => scaled <= m * (1 + 1e-9));
  return step * power;
}

/** Creates the plots' figures, empty, before the first poll (so nothing moves later). */
function setUpPlots() {
  document.getElementById("plots").replaceChildren(...PLOTS.map((plot) => {
    const figure = document.createElement("figure");
    figure.className = "plot";
    figure.id = plot.id;
    figure.innerHTML = "<figcaption></figcaption><svg role=\"img\"></svg><ul class=\"legend\"></ul>";
    const caption = figure.querySelector("figcaption");
    caption.append(plot.caption + " ");
    caption.append(Object.assign(document.createElement("small"), { textContent: plot.note }));
    figure.querySelector("svg").setAttribute("aria-label", `${plot.caption}, ${plot.note}`);
    figure.querySelector("ul").replaceChildren(...plot.series.map(([field, label, colour]) => {
      const item = document.createElement("li");
      item.innerHTML = `<span class="swatch ${colour}"></span>`;
      item.append(label + " ", Object.assign(document.createElement("output"),
        { id: `${plot.id}-${field}`, textContent: "–" }));
      return item;
    }));
    return figure;
  }));
  renderPlots();
}

/** Draws every plot from the samples. */
function renderPlots() {
  for (const plot of PLOTS) renderPlot(plot);
}

/** Draws one plot: grid, tick labels with units, a line per series, the legend's latest
 *  values. Its figure's data-points is the number of samples, data-max the highest
 *  value over them. */
function renderPlot(plot) {
  const figure = document.getElementById(plot.id);
  const svg = figure.querySelector("svg");
  const { width, height } = svg.getBoundingClientRect();
  const box = { left: 52, right: width - 10, top: 8, bottom: height - 20 };
  const end = samples.length ? samples[samples.length - 1].at : performance.now();
  const values = samples.flatMap((s) => plot.series.map(([field]) => s[field]))
    .filter((v) => typeof v === "number");
  const highest = values.length ? Math.max(...values) : null;
  // A tenth of headroom, so that a line at the peak is not drawn on the frame.
  const top = niceMax(highest * 1.1, plot.floor);
  // Time runs from 15 minutes before the newest sample (left) to it (right); values
  // from 0 (bottom) to the axis' top.
  const x = (at) => box.right - ((end - at) / PLOT_SPAN_MS) * (box.right - box.left);
  const y = (v) => box.bottom - (v / top) * (box.bottom - box.top);

  const parts = [...yAxis(plot, top, box, y), ...xAxis(box, x, end)];
  let drawn = 0;
  for (const [field, , colour] of plot.series) {
    const [d, points] = linePath(field, x, y);
    drawn += points;
    parts.push(svgElement("path", { d, class: `line ${colour}`, id: `${plot.id}-${field}-line`, "data-points": points }));
  }
  if (drawn === 0) {
    parts.push(svgElement("text", { x: (box.left + box.right) / 2, y: (box.top + box.bottom) / 2,
      "text-anchor": "middle" }, plot.empty));
  }
  svg.replaceChildren(...parts);

  figure.dataset.points = String(samples.length);
  figure.dataset.max = highest === null ? "" : String(highest);
  const latest = samples[samples.length - 1] || {};
  for (const [field] of plot.series) {
    const v = latest[field] ?? null;
    show(`${plot.id}-${field}`, v, v === null ? "–" : plot.tick(v));
  }
}

/** Horizontal grid lines and labels at 0, half and the top of the y axis (no half
 *  for whole numbers it would not be). */
function yAxis(plot, top, box, y) {
  const ticks = plot.whole && top % 2 !== 0 ? [0, top] : [0, top / 2, top];
  return ticks.flatMap((v) => [
    svgElement("line", { x1: box.left, x2: box.right, y1: y(v), y2: y(v), class: "grid" }),
    svgElement("text", { x: box.left - 6, y: y(v) + 4, "text-anchor": "end" }, plot.tick(v)),
  ]);
}

/** Vertical grid lines and labels every five minutes back from the newest sample. */
function xAxis(box, x, end) {
  return [15, 10, 5, 0].flatMap((minutes) => {
    const at = x(end - minutes * 60000);
    const anchor = minutes === 15 ? "start" : minutes === 0 ? "end" : "middle";
    return [
      svgElement("line", { x1: at, x2: at, y1: box.top, y2: box.bottom, class: "grid" }),
      svgElement("text", { x: at, y: box.bottom + 15, "text-anchor": anchor },
        minutes === 0 ? "now" : `−${minutes} min`),
    ];
  });
}

/** SVG path data through the samples' `field`, and how many points it has. The line
 *  breaks where a value is missing or polls were missed; each piece starts with a
 *  zero-length segment ("h0"), which the round line cap draws as a dot, so that a lone
 *  point shows too. */
function linePath(field, x, y) {
  let d = "";
  let points = 0;
  let previous = null;
  for (const sample of samples) {
    const v = sample[field];
    if (typeof v !== "number" || Number.isNaN(v)) {
      previous = null;
      continue;
    }
    const [px, py] = [x(sample.at).toFixed(1), y(v).toFixed(1)];
    const joined = previous !== null && sample.at - previous.at <= PLOT_GAP_MS;
    d += joined ? `L${px} ${py}` : `M${px} ${py}h0`;
    previous = sample;
    points += 1;
  }
  return [d, points];
}

/** The SVG namespace, read off an element the HTML parser made: spelled out, it would
 *  be the only URL in a page that refers to nothing outside itself. */
const SVG_NS = (() => {
  const template = document.createElement("template");
  template.innerHTML = "<svg></svg>";
  return template.content.firstChild.namespaceURI;
})();

/** A new SVG element with these attributes (and text). */
function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
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
    addSample();
    renderPlots();
    renderStatus(JSON.parse(status));
    indicator.textContent = "live · " + new Date().toLocaleTimeString("en-GB");
    indicator.dataset.state = "ok";
  } catch (error) {
    indicator.textContent = "cannot reach the server: " + error.message;
    indicator.dataset.state = "error";
  }
  setTimeout(poll, POLL_MS);
}

setUpPlots();
window.addEventListener("resize", renderPlots);
poll();
