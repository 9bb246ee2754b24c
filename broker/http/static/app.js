// Leveret dashboard: plain JavaScript on RabbitMQ's management API (/api), no build step.
// API data only ever reaches the page as text (textContent, never innerHTML).
"use strict";

const AUTH_KEY = "leveret.auth";
const SAMPLES = 60; // points kept for the charts
const params = new URLSearchParams(location.search);
const INTERVAL = Math.max(100, parseInt(params.get("interval"), 10) || 2000);

const state = {
  auth: sessionStorage.getItem(AUTH_KEY),
  timer: null,
  route: null,    // {view, vhost, name}
  view: null,     // what the current view needs refreshed: {refresh: async fn}
  series: [],     // overview samples: {t, publish, deliver, ack, ready, unacked} (counters and rates)
  last: null,     // the previous overview sample
  busy: false,
  again: false,
};

// ---------------------------------------------------------------------------- DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function fmtNum(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "";
}

function fmtRate(n) {
  if (typeof n !== "number") return "";
  return (Math.round(n * 10) / 10).toLocaleString("en-US", {minimumFractionDigits: 1, maximumFractionDigits: 1}) + "/s";
}

function fmtBytes(n) {
  if (n === undefined || n === null) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function stat(k, v, id) {
  return el("div", {class: "stat"}, el("div", {class: "v", id}, v), el("div", {class: "k"}, k));
}

function table(headers, rows, empty) {
  const head = el("tr", {}, headers.map((h) => el("th", {class: h.endsWith("#") ? "n" : null}, h.replace(/#$/, ""))));
  const body = rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: headers.length}, empty || "none"))];
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

const num = (v) => el("td", {class: "n"}, fmtNum(v));
const rateCell = (v) => el("td", {class: "n"}, fmtRate(v));
const rateOf = (stats, key) => (stats && stats[key + "_details"] ? stats[key + "_details"].rate : 0);

function showError(text) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
}

// ---------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

const enc = encodeURIComponent; // vhost "/" becomes %2F

async function api(path, options = {}, auth = state.auth) {
  const headers = {Authorization: "Basic " + auth};
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch("/api" + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const reason = data && data.reason ? data.reason : resp.status + " " + resp.statusText;
    throw new ApiError(resp.status, reason);
  }
  return data;
}

// ---------------------------------------------------------------------------- login

function showLogin(reason) {
  stopPolling();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason || "";
  $("login-user").focus();
}

async function login(event) {
  event.preventDefault();
  const user = $("login-user").value;
  const password = $("login-password").value;
  const auth = btoa(String.fromCharCode(...new TextEncoder().encode(user + ":" + password)));
  $("login-error").textContent = "";
  try {
    await api("/whoami", {}, auth);
  } catch (e) {
    $("login-error").textContent = e.message; // the API's reason: "Login failed", "Not management user"...
    return;
  }
  state.auth = auth;
  sessionStorage.setItem(AUTH_KEY, auth);
  $("login-password").value = "";
  start();
}

function logout() {
  sessionStorage.removeItem(AUTH_KEY);
  state.auth = null;
  state.series = [];
  state.last = null;
  showLogin("");
}

async function start() {
  let me;
  try {
    me = await api("/whoami");
  } catch (e) {
    showLogin(e.message);
    return;
  }
  $("whoami").textContent = me.name;
  $("login").hidden = true;
  $("app").hidden = false;
  route();
}

// ---------------------------------------------------------------------------- polling

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

async function tick() {
  stopPolling();
  if (!state.auth) return;
  if (state.busy) {
    state.again = true; // a poll is on its way: poll again as soon as it is done
    return;
  }
  state.busy = true;
  try {
    const overview = await api("/overview");
    sample(overview);
    if (state.view) await state.view.refresh(overview);
    showError("");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(AUTH_KEY);
      state.auth = null;
      showLogin(e.message);
    } else {
      showError(e.message);
    }
  } finally {
    state.busy = false;
  }
  if (!state.auth) return;
  stopPolling();
  state.timer = setTimeout(tick, state.again ? 0 : INTERVAL);
  state.again = false;
}

// One overview sample: message rates are computed here from the counters' change since the
// previous poll (so the charts move at the poll interval); queued messages as reported.
function sample(o) {
  const ms = o.message_stats || {};
  const qt = o.queue_totals || {};
  const now = performance.now();
  const cur = {t: now, publish: ms.publish || 0, deliver: ms.deliver_get || 0, ack: ms.ack || 0,
               ready: qt.messages_ready || 0, unacked: qt.messages_unacknowledged || 0};
  const prev = state.last;
  if (prev) {
    const dt = Math.max((now - prev.t) / 1000, 1e-3);
    const d = (k) => Math.max(cur[k] - prev[k], 0) / dt;
    state.series.push({publish: d("publish"), deliver: d("deliver"), ack: d("ack"),
                       ready: cur.ready, unacked: cur.unacked});
  } else {
    state.series.push({publish: rateOf(ms, "publish"), deliver: rateOf(ms, "deliver_get"), ack: rateOf(ms, "ack"),
                       ready: cur.ready, unacked: cur.unacked});
  }
  if (state.series.length > SAMPLES) state.series.shift();
  state.last = cur;
}

// ---------------------------------------------------------------------------- charts

function drawChart(canvas, lines) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400;
  const h = canvas.clientHeight || 200;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pad = {l: 48, r: 8, t: 8, b: 18};
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  let max = 0;
  for (const line of lines) for (const v of line.values) max = Math.max(max, v);
  max = niceMax(max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#66737a";
  g.strokeStyle = "#e3e8ea";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ph - (ph * i) / 4;
    g.beginPath();
    g.moveTo(pad.l, Math.round(y) + 0.5);
    g.lineTo(pad.l + pw, Math.round(y) + 0.5);
    g.stroke();
    g.fillText(shortNum((max * i) / 4), pad.l - 6, y);
  }
  g.textAlign = "left";
  g.textBaseline = "top";
  g.fillText("last " + Math.round((SAMPLES * INTERVAL) / 1000) + " s", pad.l, pad.t + ph + 4);
  const step = pw / (SAMPLES - 1);
  for (const line of lines) {
    const vs = line.values;
    if (!vs.length) continue;
    const x0 = pad.l + pw - (vs.length - 1) * step;
    g.strokeStyle = line.color;
    g.lineWidth = 2;
    g.beginPath();
    vs.forEach((v, i) => {
      const x = x0 + i * step;
      const y = pad.t + ph - (max ? (v / max) * ph : 0);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

// the top of the scale: four grid steps of a round size, a little above the largest value
function niceMax(v) {
  if (v <= 0) return 4;
  const step = (v * 1.1) / 4;
  const p = Math.pow(10, Math.floor(Math.log10(step)));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10]) if (m * p >= step) return Math.max(4, 4 * m * p);
  return Math.max(4, 40 * p);
}

function shortNum(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
  return String(Math.round(v * 10) / 10);
}

function chartCard(title, id, series) {
  return el("div", {class: "card chart"},
    el("h2", {}, title),
    el("canvas", {id, role: "img", "aria-label": title}),
    el("div", {class: "legend"}, series.map(([label, color, vid]) =>
      el("span", {}, el("i", {style: "background:" + color}), label + " ", el("b", {id: vid}, "")))));
}

// ---------------------------------------------------------------------------- views

const views = {
  overview() {
    const main = el("div", {},
      el("h1", {}, "Overview"),
      el("div", {class: "stats"},
        stat("Ready", "", "ov-ready"), stat("Unacked", "", "ov-unacked"), stat("Total", "", "ov-total"),
        stat("Publish", "", "ov-publish"), stat("Deliver / get", "", "ov-deliver"), stat("Ack", "", "ov-ack")),
      el("div", {class: "charts"},
        chartCard("Message rates (per second, between polls)", "chart-rates",
          [["publish", "var(--c1)", "lg-publish"], ["deliver / get", "var(--c2)", "lg-deliver"], ["ack", "var(--c3)", "lg-ack"]]),
        chartCard("Queued messages", "chart-queued",
          [["ready", "var(--c1)", "lg-ready"], ["unacked", "var(--c2)", "lg-unacked"]])),
      el("h2", {}, "Totals"),
      el("div", {class: "stats", id: "ov-objects"}),
      el("h2", {id: "ov-memory-title", hidden: true}, "Memory"),
      el("div", {class: "stats", id: "ov-memory"}),
      el("p", {class: "muted", id: "ov-node"}));
    const colors = getComputedStyle(document.documentElement);
    const c = (name) => colors.getPropertyValue(name).trim() || "#333";
    return {
      main,
      async refresh(o) {
        const qt = o.queue_totals || {};
        $("ov-ready").textContent = fmtNum(qt.messages_ready);
        $("ov-unacked").textContent = fmtNum(qt.messages_unacknowledged);
        $("ov-total").textContent = fmtNum(qt.messages);
        // the rate cards and the chart's legend show one figure: the page's own rate over
        // the last poll interval (the chart's latest point), not the API's *_details.rate,
        // which the broker samples on its own clock (http_rate_interval)
        const s = state.series;
        const last = s[s.length - 1] || {};
        for (const k of ["publish", "deliver", "ack"]) {
          const text = fmtRate(last[k]);
          $("ov-" + k).textContent = text;
          $("lg-" + k).textContent = text;
        }
        const ot = o.object_totals || {};
        $("ov-objects").replaceChildren(...["connections", "channels", "exchanges", "queues", "consumers"].map(
          (k) => stat(k[0].toUpperCase() + k.slice(1), fmtNum(ot[k]), "ov-" + k)));
        if (o.node) { // the node's memory breakdown and budget (monitoring users only)
          const m = await api("/nodes/" + encodeURIComponent(o.node) + "/memory");
          const mem = m.memory || {};
          const b = m.budget || {};
          $("ov-memory-title").hidden = false;
          $("ov-memory").replaceChildren(
            stat("RSS", fmtBytes((mem.total || {}).rss), "mem-rss"),
            stat("Message bodies", fmtBytes(mem.binary), "mem-binary"),
            stat("Queues", fmtBytes(mem.queue_procs), "mem-queues"),
            stat("Connections", fmtBytes(mem.connection_writers), "mem-connections"),
            stat("Allocated, unused", fmtBytes(mem.allocated_unused), "mem-unused"),
            stat("Other", fmtBytes(mem.other_proc), "mem-other"),
            stat("Budget used", fmtBytes(b.used) + " / " + fmtBytes(b.limit), "mem-budget"),
            stat("Queues holding (share)", fmtNum(b.queues_holding) + " (" + fmtBytes(b.queue_share) + ")", "mem-share"));
        }
        $("ov-node").textContent = [o.product_name, o.product_version, "(RabbitMQ " + o.rabbitmq_version + " API)",
                                    o.node ? "node " + o.node : ""].join(" ").trim(); // (node: monitoring users only)
        for (const k of ["ready", "unacked"]) $("lg-" + k).textContent = fmtNum(last[k]);
        drawChart($("chart-rates"), [
          {color: c("--c1"), values: s.map((p) => p.publish)},
          {color: c("--c2"), values: s.map((p) => p.deliver)},
          {color: c("--c3"), values: s.map((p) => p.ack)}]);
        drawChart($("chart-queued"), [
          {color: c("--c1"), values: s.map((p) => p.ready)},
          {color: c("--c2"), values: s.map((p) => p.unacked)}]);
      },
    };
  },

  queues() {
    const holder = el("div", {id: "queues-table"});
    return {
      main: el("div", {}, el("h1", {}, "Queues"), holder),
      async refresh() {
        const qs = await api("/queues");
        const rows = qs.map((q) => el("tr", {"data-vhost": q.vhost, "data-queue": q.name},
          el("td", {class: "name"}, el("a", {href: "#/queue/" + enc(q.vhost) + "/" + enc(q.name)}, q.name)),
          el("td", {}, q.vhost),
          el("td", {class: "type"}, q.type || "classic"),
          el("td", {}, q.state),
          el("td", {class: "n ready"}, fmtNum(q.messages_ready)),
          el("td", {class: "n unacked"}, fmtNum(q.messages_unacknowledged)),
          el("td", {class: "n total"}, fmtNum(q.messages)),
          num(q.consumers),
          rateCell(rateOf(q.message_stats, "publish")),
          rateCell(rateOf(q.message_stats, "deliver_get"))));
        holder.replaceChildren(table(["Name", "Virtual host", "Type", "State", "Ready#", "Unacked#", "Total#", "Consumers#",
                                      "Publish#", "Deliver / get#"], rows, "no queues"));
      },
    };
  },

  queue({vhost, name}) {
    const path = "/queues/" + enc(vhost) + "/" + enc(name);
    const details = el("dl", {class: "details", id: "queue-details"});
    const bindings = el("div", {id: "queue-bindings"});
    const getResult = el("div", {id: "get-result"});
    const purgeResult = el("p", {id: "purge-result", class: "ok", role: "status"});
    const publishResult = el("p", {id: "publish-result", class: "ok", role: "status"});

    const getForm = el("form", {class: "card action", id: "get-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const count = parseInt($("get-count").value, 10) || 1;
      const ackmode = $("get-ackmode").value;
      getResult.replaceChildren();
      try {
        const msgs = await api(path + "/get", {method: "POST",
          body: {count, ackmode, encoding: "auto", truncate: 50000}});
        getResult.replaceChildren(...(msgs.length ? msgs.map((m, i) => el("div", {class: "msg"},
          el("div", {}, el("b", {}, "Message " + (i + 1)), " ",
            el("span", {class: "muted"}, "exchange " + (m.exchange || "(AMQP default)") + ", routing key " + m.routing_key +
              (m.redelivered ? ", redelivered" : "") + ", " + m.payload_bytes + " bytes (" + m.payload_encoding + ")" +
              ", " + m.message_count + " left")),
          Object.keys(m.properties || {}).length ? el("div", {class: "muted"}, "properties " + JSON.stringify(m.properties)) : null,
          el("pre", {class: "payload"}, m.payload))) : [el("p", {class: "muted"}, "Queue is empty")]));
        state.view && state.view.refresh();
      } catch (e) {
        getResult.replaceChildren(el("p", {class: "error"}, e.message));
      }
    }},
      el("h2", {}, "Get messages"),
      el("div", {class: "row"},
        el("label", {}, "Count", el("input", {id: "get-count", type: "number", min: 1, value: 1, style: "width:6em"})),
        el("label", {}, "Ack mode", el("select", {id: "get-ackmode"},
          el("option", {value: "ack_requeue_true"}, "Nack message requeue true"),
          el("option", {value: "ack_requeue_false"}, "Automatic ack"),
          el("option", {value: "reject_requeue_true"}, "Reject requeue true"))),
        el("button", {type: "submit", id: "get-submit"}, "Get messages")),
      getResult);

    const purgeForm = el("form", {class: "card action", id: "purge-form", onsubmit: async (ev) => {
      ev.preventDefault();
      purgeResult.textContent = "";
      if (!confirm("Purge all ready messages of queue '" + name + "' in vhost '" + vhost + "'?")) return;
      try {
        await api(path + "/contents", {method: "DELETE"});
        purgeResult.textContent = "Queue purged";
        state.view && state.view.refresh();
      } catch (e) {
        purgeResult.textContent = "";
        showError(e.message);
      }
    }},
      el("h2", {}, "Purge"),
      el("p", {class: "muted"}, "Delete every ready message of this queue."),
      el("div", {}, el("button", {type: "submit", class: "danger", id: "purge-submit"}, "Purge messages")),
      purgeResult);

    const publishForm = el("form", {class: "card action", id: "publish-form", onsubmit: async (ev) => {
      ev.preventDefault();
      publishResult.textContent = "";
      const props = {delivery_mode: parseInt($("publish-mode").value, 10)};
      try {
        const r = await api("/exchanges/" + enc(vhost) + "/amq.default/publish", {method: "POST",
          body: {routing_key: name, payload: $("publish-payload").value, payload_encoding: "string", properties: props}});
        publishResult.textContent = r.routed ? "Message published" : "Message published, but not routed";
        state.view && state.view.refresh();
      } catch (e) {
        showError(e.message);
      }
    }},
      el("h2", {}, "Publish message"),
      el("p", {class: "muted"}, "Through the default exchange, routing key = queue name."),
      el("label", {}, "Delivery mode", el("select", {id: "publish-mode"},
        el("option", {value: 1}, "1 - non-persistent"), el("option", {value: 2}, "2 - persistent"))),
      el("label", {}, "Payload", el("textarea", {id: "publish-payload"})),
      el("div", {}, el("button", {type: "submit", id: "publish-submit"}, "Publish message")),
      publishResult);

    return {
      main: el("div", {},
        el("h1", {}, "Queue ", el("span", {id: "queue-name"}, name), el("span", {class: "muted"}, " in vhost " + vhost)),
        el("div", {class: "card"}, details),
        el("div", {class: "forms"}, getForm, publishForm, purgeForm),
        el("h2", {}, "Bindings"), bindings),
      async refresh() {
        const [q, bs] = await Promise.all([api(path), api(path + "/bindings")]);
        const ms = q.message_stats || {};
        const items = [
          ["Type", q.type || "classic", "q-type"], ["State", q.state, "q-state"], ["Ready", fmtNum(q.messages_ready), "q-ready"],
          ["Unacked", fmtNum(q.messages_unacknowledged), "q-unacked"], ["Total", fmtNum(q.messages), "q-total"],
          ["Ready bytes", fmtNum(q.message_bytes_ready), "q-bytes"], ["Consumers", fmtNum(q.consumers), "q-consumers"],
          ["Publish", fmtRate(rateOf(ms, "publish")), "q-publish"],
          ["Deliver / get", fmtRate(rateOf(ms, "deliver_get")), "q-deliver"],
          ["Ack", fmtRate(rateOf(ms, "ack")), "q-ack"],
          ["Features", [q.durable ? "durable" : "transient", q.auto_delete ? "auto-delete" : "",
                        q.exclusive ? "exclusive" : ""].filter(Boolean).join(", "), "q-features"],
          ["Arguments", JSON.stringify(q.arguments || {}), "q-arguments"],
          ["Policy", q.policy || "", "q-policy"], ["Operator policy", q.operator_policy || "", "q-operator-policy"],
          ["Effective policy definition", JSON.stringify(q.effective_policy_definition || {}), "q-effective-policy"]];
        details.replaceChildren(...items.flatMap(([k, v, id]) => [el("dt", {}, k), el("dd", {id}, v)]));
        bindings.replaceChildren(table(["From exchange", "Routing key", "Arguments"], bs.map((b) => el("tr", {},
          el("td", {}, b.source || "(AMQP default)"), el("td", {}, b.routing_key),
          el("td", {}, JSON.stringify(b.arguments || {}))))));
      },
    };
  },

  shovels() {
    // /api/shovels (monitoring users); the rate is worked out here from the counter
    const holder = el("div", {id: "shovels-table"});
    let last = null;
    return {
      main: el("div", {}, el("h1", {}, "Shovels"), holder),
      async refresh() {
        const ss = await api("/shovels");
        const now = Date.now();
        const before = last;
        last = {at: now, counts: new Map(ss.map((s) => [s.vhost + "\u0000" + s.name, s.messages_forwarded]))};
        const rate = (s) => {
          if (!before) return null;
          const prev = before.counts.get(s.vhost + "\u0000" + s.name);
          const dt = (now - before.at) / 1000;
          return typeof prev === "number" && dt > 0 ? Math.max(0, s.messages_forwarded - prev) / dt : null;
        };
        const ends = (s, side) => [s[side + "_queue"] || s[side + "_exchange"] || "", s[side + "_uri"] || ""]
          .filter(Boolean).join(" @ ");
        holder.replaceChildren(table(["Name", "Virtual host", "State", "Source", "Destination", "Forwarded#",
                                      "Acked#", "Pending#", "Rate#"],
          ss.map((s) => el("tr", {"data-vhost": s.vhost, "data-shovel": s.name},
            el("td", {class: "name"}, s.name), el("td", {}, s.vhost),
            el("td", {class: "state", title: s.reason || ""}, s.state),
            el("td", {}, ends(s, "src")), el("td", {}, ends(s, "dest")),
            el("td", {class: "n forwarded"}, fmtNum(s.messages_forwarded)),
            num(s.messages_acknowledged), num(s.messages_pending), rateCell(rate(s)))), "no shovels"));
      },
    };
  },

  connections() {
    const conns = el("div", {id: "connections-table"});
    const chans = el("div", {id: "channels-table"});
    return {
      main: el("div", {}, el("h1", {}, "Connections"), conns, el("h2", {}, "Channels"), chans),
      async refresh() {
        const [cs, chs] = await Promise.all([api("/connections"), api("/channels")]);
        conns.replaceChildren(table(["Name", "User", "Virtual host", "State", "Channels#", "Client", "Heartbeat#"],
          cs.map((c) => {
            const cp = c.client_properties || {};
            return el("tr", {"data-connection": c.name}, el("td", {}, c.name), el("td", {}, c.user), el("td", {}, c.vhost),
              el("td", {}, c.state), num(c.channels),
              el("td", {}, [cp.product, cp.version].filter((x) => typeof x === "string").join(" ")),
              num(c.timeout));
          }), "no connections"));
        chans.replaceChildren(table(["Channel", "User", "Virtual host", "Mode", "Consumers#", "Unacked#", "Prefetch#"],
          chs.map((ch) => el("tr", {}, el("td", {}, ch.name), el("td", {}, ch.user), el("td", {}, ch.vhost),
            el("td", {}, [ch.confirm ? "confirm" : "", ch.transactional ? "tx" : ""].filter(Boolean).join(", ")),
            num(ch.consumer_count), num(ch.messages_unacknowledged), num(ch.prefetch_count))), "no channels"));
      },
    };
  },

  exchanges({vhost, name}) {
    const selected = vhost !== undefined;
    const list = el("div", {id: "exchanges-table"});
    const bindings = el("div", {id: "exchange-bindings"});
    const seg = (n) => (n === "" ? "amq.default" : n);
    return {
      main: el("div", {}, el("h1", {}, "Exchanges"), list,
        selected ? el("h2", {}, "Bindings from ", el("span", {id: "exchange-name"}, name || "(AMQP default)"),
                      el("span", {class: "muted"}, " in vhost " + vhost)) : null,
        selected ? bindings : null),
      async refresh() {
        const xs = await api("/exchanges");
        list.replaceChildren(table(["Name", "Virtual host", "Type", "Features", "Policy"], xs.map((x) => el("tr",
          {class: selected && x.vhost === vhost && x.name === name ? "selected" : null, "data-vhost": x.vhost, "data-exchange": x.name},
          el("td", {}, el("a", {href: "#/exchange/" + enc(x.vhost) + "/" + enc(seg(x.name))}, x.name || "(AMQP default)")),
          el("td", {}, x.vhost), el("td", {}, x.type),
          el("td", {}, [x.durable ? "durable" : "transient", x.auto_delete ? "auto-delete" : "",
                        x.internal ? "internal" : "",
                        x.messages_delayed !== undefined ? x.messages_delayed + " delayed" : ""].filter(Boolean).join(", ")),
          el("td", {class: "x-policy"}, x.policy || ""))), "no exchanges"));
        if (selected) {
          const bs = await api("/exchanges/" + enc(vhost) + "/" + enc(seg(name)) + "/bindings/source");
          bindings.replaceChildren(table(["To", "Type", "Routing key", "Arguments"], bs.map((b) => el("tr", {},
            el("td", {}, b.destination_type === "queue"
              ? el("a", {href: "#/queue/" + enc(b.vhost) + "/" + enc(b.destination)}, b.destination) : b.destination),
            el("td", {}, b.destination_type), el("td", {}, b.routing_key),
            el("td", {}, JSON.stringify(b.arguments || {})))), "no bindings"));
        }
      },
    };
  },
};

// ---------------------------------------------------------------------------- routing

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch (e) {
      return p;
    }
  });
  const [view, vhost, name] = parts;
  if (view === "queue" && parts.length === 3) return {view: "queue", tab: "queues", vhost, name};
  if (view === "exchange" && parts.length === 3) {
    return {view: "exchanges", tab: "exchanges", vhost, name: name === "amq.default" ? "" : name};
  }
  if (views[view]) return {view, tab: view};
  return {view: "overview", tab: "overview"};
}

function route() {
  if (!state.auth) return;
  const r = parseRoute();
  state.route = r;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === r.tab);
  state.view = views[r.view](r);
  $("view").replaceChildren(state.view.main);
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  if (state.auth) start();
  else showLogin("");
});
