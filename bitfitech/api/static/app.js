// bitfi dashboard: reads and steers this node through its own JSON API.
//
// Data: polling (GET /status, /book, /trades, /orders, /peers every 2 s, and
// right after each action) always works; when GET /stream (Server-Sent
// Events) connects, its events update the page at once and polling slows to
// a resync every 10 s.  Prices and amounts are decimal strings from the API
// to the screen and from the form to the API: Number() is used only to place
// things on the depth chart, never for a value sent back.  The ordering (fair
// order by witness stamps, or author clocks), its settled and final points
// and the witnesses come from GET /status ("ordering", "witnesses").
"use strict";

(function () {
  const POLL_MS = 2000;
  const LIVE_POLL_MS = 10000;
  const STREAM_RETRY_MS = 15000;
  const TOKEN_KEY = "bitfi.token";
  const MAX_TRADES = 30;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    status: null,
    statusAt: 0,
    book: { bids: [], asks: [] },
    trades: [],
    orders: [],
    peers: [],
    stream: null,
    streamLive: false,
    pollTimer: null,
    polling: false,
    again: false,
    needsToken: false,
  };

  const $ = (id) => document.getElementById(id);

  // -- tokens

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* storage disabled: the token lasts until the page is left */
    }
  }

  function askToken(reason) {
    state.needsToken = true;
    $("token-reason").textContent = reason;
    $("token-form").hidden = false;
    setConnection("token", "needs a token");
  }

  // -- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const init = { method: method, headers: headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let doc = null;
    try {
      doc = await response.json();
    } catch (e) {
      doc = null;
    }
    if (response.status === 401) {
      askToken(t ? "The token was refused; paste another." : "This node's API needs a token.");
      throw new ApiError(401, (doc && doc.error) || "a token is needed");
    }
    if (!response.ok) {
      throw new ApiError(response.status, (doc && doc.error) || response.status + " " + response.statusText);
    }
    return doc;
  }

  // -- decimal strings (exact, for cumulative depth)

  function decParts(s) {
    const [whole, frac = ""] = String(s).split(".");
    return { digits: BigInt((whole || "0") + frac), scale: frac.length };
  }

  function decAdd(a, b) {
    const x = decParts(a);
    const y = decParts(b);
    const scale = Math.max(x.scale, y.scale);
    const sum = x.digits * 10n ** BigInt(scale - x.scale) + y.digits * 10n ** BigInt(scale - y.scale);
    if (scale === 0) return sum.toString();
    const text = sum.toString().padStart(scale + 1, "0");
    const frac = text.slice(-scale).replace(/0+$/, "");
    const whole = text.slice(0, -scale);
    return frac ? whole + "." + frac : whole;
  }

  // -- small DOM helpers

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function short(id) {
    return id ? String(id).slice(0, 12) + "…" : "—";
  }

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  const drawn = new Map();

  // Tell whether C{data} differs from what C{key} last drew (and remember it):
  // unchanged tables are not rebuilt, so a button being clicked stays put.
  function changed(key, data) {
    const signature = JSON.stringify(data);
    if (drawn.get(key) === signature) return false;
    drawn.set(key, signature);
    return true;
  }

  function fill(tbody, rows, emptyText, columns) {
    // Keep keyboard focus on the same button across a rebuild.
    const focused = tbody.contains(document.activeElement) ? document.activeElement : null;
    const focusKey = focused && focused.dataset.id ? focused.className + "|" + focused.dataset.id : null;
    tbody.replaceChildren(
      ...(rows.length ? rows : [el("tr", { class: "empty" }, [el("td", { colspan: String(columns), text: emptyText })])])
    );
    if (focusKey) {
      const again = [...tbody.querySelectorAll("button[data-id]")].find((b) => b.className + "|" + b.dataset.id === focusKey);
      if (again) again.focus();
    }
  }

  function setConnection(mode, text) {
    const badge = $("connection");
    badge.dataset.mode = mode;
    badge.textContent = text;
  }

  // -- rendering

  function renderStatus() {
    const s = state.status;
    if (!s) return;
    setText("pair", s.pair || "");
    setText("node-id", s.node_id || "—");
    setText("network", (s.network || "?") + " / " + (s.pair || "?"));
    setText("events", s.events === undefined ? "—" : String(s.events));
    setText("state-hash", s.state_hash || "—");
    const p = s.peers || {};
    setText("peer-counts", (p.inbound ?? 0) + " in, " + (p.outbound ?? 0) + " out" +
      (p.handshaking ? ", " + p.handshaking + " handshaking" : "") +
      (p.known_addresses !== undefined ? "; " + p.known_addresses + " known addresses" : ""));
    setText("mdns", s.mdns ? "on" + (s.mdns.interface ? " (" + s.mdns.interface + ")" : "") +
      (s.mdns.discovered !== undefined ? ", " + s.mdns.discovered + " discovered" : "") : s.mdns === null ? "off" : "—");
    setText("dht", s.dht ? "on, port " + s.dht.port + ", " + (s.dht.routing_table_size ?? 0) + " in routing table" +
      (s.dht.peers_found !== undefined ? ", " + s.dht.peers_found + " peers found" : "") : s.dht === null ? "off" : "—");
    renderOrdering(s);
    if (typeof s.uptime_s === "number") {
      const t = Math.floor(s.uptime_s);
      setText("uptime", Math.floor(t / 3600) + " h " + Math.floor((t % 3600) / 60) + " min " + (t % 60) + " s");
    }
    if (s.pair) document.title = "bitfi " + s.pair;
  }

  function plural(count, one, many) {
    return count + " " + (count === 1 ? one : many);
  }

  // Unix ms as local HH:MM:SS.mmm (fair times differ by milliseconds).
  function clockTime(ms) {
    const d = new Date(ms);
    const two = (n) => String(n).padStart(2, "0");
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds()) + "." +
      String(d.getMilliseconds()).padStart(3, "0");
  }

  function age(ms) {
    if (ms < 0) return "just now";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s ago";
    return Math.floor(ms / 60000) + " min ago";
  }

  // A settled or final point of the fair order: where it is, and how many events it covers.
  function point(through, events) {
    if (through === null || through === undefined) return "not yet";
    return "through " + clockTime(through) + " (" + plural(events ?? 0, "event", "events") + ")";
  }

  function setBadge(id, kind, text, title) {
    const node = $(id);
    let badge = node.firstElementChild;
    if (!badge || badge.tagName !== "SPAN") {
      badge = el("span", {});
      node.replaceChildren(badge);
    }
    badge.className = "badge " + kind;
    badge.title = title;
    if (badge.textContent !== text) badge.textContent = text;
  }

  function renderOrdering(s) {
    const w = s.witnesses || {};
    const fair = s.ordering === "fair" && w.n;
    if (fair) {
      setBadge("ordering", "fair", "fair order, " + plural(w.n, "witness", "witnesses"),
        "events are ordered by the witnesses' stamps (up to " + w.f + " may be faulty)" +
        (w.me === null || w.me === undefined ? "" : "; this node is one of them"));
      setText("settled-point", point(w.settled_through_ms, w.settled_events));
      setText("final-point", point(w.final_through_ms, w.final_events));
    } else if (s.ordering !== undefined) {
      setBadge("ordering", "author", "author clocks",
        "no witnesses: events are ordered by their authors' Lamport clocks");
      setText("settled-point", "through Lamport " + (s.settled_through ?? 0));
      setText("final-point", "never (no witnesses)");
    }
    renderWitnesses(fair ? w : null);
  }

  function renderWitnesses(w) {
    const chains = w ? w.chains || [] : [];
    const at = state.statusAt;
    if (!changed("witnesses", [w, at])) return;
    if (!w) {
      setText("witnesses-summary", "This network names no witnesses: events are ordered by " +
        "their authors' clocks, trades settle after a delay and are never final.");
      fill($("witnesses").tBodies[0], [], "no witnesses", 6);
      return;
    }
    const flagged = Object.keys(w.flagged || {}).length;
    setText("witnesses-summary", "n = " + w.n + ", f = " + w.f + ": a trade is settled once " +
      (w.n - w.f) + " of " + w.n + " witnesses' stamps are past it, and final once all are; " +
      plural(w.waiting_events ?? 0, "event waits", "events wait") + " for a fair time; " +
      plural(w.stamps ?? 0, "stamp", "stamps") + " held" +
      (flagged ? "; " + flagged + " flagged faulty." : "."));
    const rows = chains.map((c, i) => {
      const me = i === w.me;
      let stateCell;
      if (c.flagged) stateCell = el("span", { class: "badge flagged", title: "proven faulty: its receipts are ignored", text: "flagged: " + c.flagged });
      else if (c.t === null || c.t === undefined) stateCell = el("span", { class: "badge quiet", title: "no stamp of it held yet", text: "no stamps yet" });
      else stateCell = el("span", { class: "badge ok", title: "its chain of stamps is sound", text: "ok" });
      return el("tr", { "data-id": c.node_id, class: c.flagged ? "flagged" : "" }, [
        el("td", {}, [el("code", { title: c.node_id, text: short(c.node_id) }), me ? " (this node)" : ""]),
        el("td", { class: "num", text: String(c.seq ?? 0) }),
        el("td", c.t === null || c.t === undefined ? { text: "—" } : { title: "its clock: " + new Date(c.t).toISOString(), text: age(at - c.t) }),
        el("td", { class: "num", text: c.lag_ms === null || c.lag_ms === undefined ? "—" : String(c.lag_ms) }),
        el("td", { class: "num", text: String(c.waiting ?? 0) }),
        el("td", {}, [stateCell]),
      ]);
    });
    fill($("witnesses").tBodies[0], rows, "no witness chains", 6);
  }

  function levelRows(levels, side) {
    return levels.map(([price, amount, count]) => {
      const priceCell = el("td", {}, [
        el("button", { type: "button", class: "price " + side, "data-price": price, title: "Use this price in the order form", text: price }),
      ]);
      return el("tr", { "data-price": price }, [priceCell, el("td", { text: amount }), el("td", { text: String(count) })]);
    });
  }

  function renderBook() {
    if (!changed("book", state.book)) return;
    const { bids, asks } = state.book;
    fill($("bids").tBodies[0], levelRows(bids, "bid"), "no bids", 3);
    fill($("asks").tBodies[0], levelRows(asks, "ask"), "no asks", 3);
    renderDepth();
  }

  function cumulative(levels) {
    let total = "0";
    return levels.map(([price, amount]) => {
      total = decAdd(total, amount);
      return { price: price, total: total };
    });
  }

  function renderDepth() {
    const chart = $("depth-chart");
    // Draw in screen pixels, so that text is never stretched.
    const W = Math.max(300, Math.round(chart.getBoundingClientRect().width) || 600), H = 220, PAD = 24;
    chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    const bids = cumulative(state.book.bids);
    const asks = cumulative(state.book.asks);
    const keep = [chart.querySelector("title")];
    const all = bids.concat(asks);
    if (!all.length) {
      chart.replaceChildren(...keep, svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", text: "the book is empty" }));
      return;
    }
    const prices = all.map((p) => Number(p.price));
    let lo = Math.min(...prices), hi = Math.max(...prices);
    if (lo === hi) { lo -= 1; hi += 1; }
    const span = hi - lo;
    lo -= span * 0.05; hi += span * 0.05;
    const top = Math.max(...all.map((p) => Number(p.total)));
    const x = (price) => PAD + ((Number(price) - lo) / (hi - lo)) * (W - 2 * PAD);
    const y = (total) => H - PAD - (Number(total) / top) * (H - 2 * PAD);
    const base = H - PAD;

    function area(points, side) {
      if (!points.length) return [];
      // Bids step down to the left of the best bid, asks up to its right.
      const edge = side === "bid" ? PAD : W - PAD;
      let d = "M" + x(points[0].price) + "," + base;
      let level = base;
      for (const p of points) {
        d += " L" + x(p.price) + "," + level + " L" + x(p.price) + "," + y(p.total);
        level = y(p.total);
      }
      d += " L" + edge + "," + level + " L" + edge + "," + base + " Z";
      const marks = points.map((p) => svg("circle", { cx: x(p.price), cy: y(p.total), r: 3, class: side },
        [svg("title", { text: (side === "bid" ? "bids" : "asks") + " at " + p.price + ": " + p.total + " cumulative" })]));
      return [svg("path", { d: d, class: "depth " + side })].concat(marks);
    }

    const axis = [
      svg("line", { x1: PAD, y1: base, x2: W - PAD, y2: base, class: "axis" }),
      svg("text", { x: PAD, y: H - 6, class: "label", text: lo.toPrecision(8).replace(/\.?0+$/, "") }),
      svg("text", { x: W - PAD, y: H - 6, "text-anchor": "end", class: "label", text: hi.toPrecision(8).replace(/\.?0+$/, "") }),
      svg("text", { x: PAD, y: PAD - 8, class: "label", text: "max " + (bids.concat(asks).reduce((m, p) => (Number(p.total) > Number(m) ? p.total : m), "0")) }),
    ];
    chart.replaceChildren(...keep, ...axis, ...area(bids, "bid"), ...area(asks, "ask"));
  }

  const TRADE_STATES = {
    tentative: "may still be revised",
    settled: "settled: no event this node has not seen can change it",
    final: "final: every witness's stamps are past it",
  };

  function tradeStatus(trade) {
    if (trade.status in TRADE_STATES) return trade.status;
    return trade.settled ? "settled" : "tentative";
  }

  // Newest first: by fair time on a network with witnesses, else by Lamport time.
  function newestFirst(a, b) {
    const fair = typeof a.fair_time === "number" && typeof b.fair_time === "number";
    return (fair ? b.fair_time - a.fair_time : (b.lamport ?? 0) - (a.lamport ?? 0)) || (b.time ?? 0) - (a.time ?? 0);
  }

  function renderTrades() {
    if (!changed("trades", state.trades.map((t) => [t.id, tradeStatus(t), t.price, t.amount]))) return;
    const rows = state.trades.map((t) => {
      const status = tradeStatus(t);
      const time = typeof t.time === "number" ? new Date(t.time).toLocaleTimeString() : "—";
      return el("tr", { class: "trade " + status, "data-id": t.id }, [
        el("td", { text: time }),
        el("td", { class: t.side, text: t.side || "" }),
        el("td", { text: t.price }),
        el("td", { text: t.amount }),
        el("td", {}, [el("span", { class: "badge " + status, title: TRADE_STATES[status], text: status })]),
      ]);
    });
    fill($("trades").tBodies[0], rows, "no trades yet", 5);
  }

  function renderOrders() {
    if (!changed("orders", state.orders.map((o) => [o.id, o.status, o.remaining]))) return;
    const rows = state.orders.map((o) => {
      const cancel = el("button", { type: "button", class: "cancel", "data-id": o.id, "aria-label": "Cancel " + o.side + " order at " + (o.price ?? "market") + " for " + o.remaining, text: "Cancel" });
      return el("tr", { "data-id": o.id, "data-price": o.price ?? "" }, [
        el("td", { class: o.side, text: o.side }),
        el("td", { text: o.type }),
        el("td", { text: o.price ?? "market" }),
        el("td", { text: o.remaining + " of " + o.amount }),
        el("td", { text: o.status }),
        el("td", {}, [cancel]),
      ]);
    });
    fill($("open-orders").tBodies[0], rows, "no open orders", 6);
  }

  function renderPeers() {
    if (!changed("peers", [state.peers, state.status ? state.status.node_id : null])) return;
    const rows = state.peers.map((p) => el("tr", { "data-id": p.node_id }, [
      el("td", {}, [el("code", { title: p.node_id, text: short(p.node_id) })]),
      el("td", { text: p.address || p.remote || "—" }),
      el("td", { text: p.direction || "—" }),
      el("td", { class: "num", text: p.rtt_ms === null || p.rtt_ms === undefined ? "—" : String(p.rtt_ms) }),
      el("td", { text: p.tls || (p.tls === null ? "plain" : "—") }),
      el("td", { text: p.user_agent || "—" }),
    ]));
    fill($("peers").tBodies[0], rows, "no peers", 6);
    renderGraph();
  }

  function renderGraph() {
    const graph = $("network-graph");
    const keep = [graph.querySelector("title")];
    const R = 105;
    const peers = state.peers;
    const parts = [];
    peers.forEach((p, i) => {
      const angle = (2 * Math.PI * i) / peers.length - Math.PI / 2;
      const px = Math.round(R * Math.cos(angle) * 10) / 10, py = Math.round(R * Math.sin(angle) * 10) / 10;
      const rtt = p.rtt_ms === null || p.rtt_ms === undefined ? "?" : p.rtt_ms + " ms";
      parts.push(svg("line", { x1: 0, y1: 0, x2: px, y2: py, class: "link " + (p.direction || "") }));
      parts.push(svg("text", { x: px / 2, y: py / 2 - 4, "text-anchor": "middle", class: "rtt", text: rtt }));
      parts.push(svg("g", { class: "peer" }, [
        svg("title", { text: p.node_id + " " + (p.address || "") + " (" + p.direction + ", " + rtt + ")" }),
        svg("circle", { cx: px, cy: py, r: 12 }),
        svg("text", { x: px, y: py + 26, "text-anchor": "middle", text: String(p.node_id || "").slice(0, 6) }),
      ]));
    });
    const self = state.status ? state.status.node_id : "";
    parts.push(svg("g", { class: "self" }, [
      svg("title", { text: "this node " + (self || "") }),
      svg("circle", { cx: 0, cy: 0, r: 16 }),
      svg("text", { x: 0, y: 32, "text-anchor": "middle", text: self ? self.slice(0, 6) + " (me)" : "me" }),
    ]));
    if (!peers.length) parts.push(svg("text", { x: 0, y: -40, "text-anchor": "middle", class: "muted", text: "no peers yet" }));
    graph.replaceChildren(...keep, ...parts);
  }

  // -- polling

  async function refresh() {
    if (state.polling) {
      // One more round once this one ends: an action's effect must show.
      state.again = true;
      return;
    }
    state.polling = true;
    state.again = false;
    try {
      const [status, book, trades, orders, peers] = await Promise.all([
        api("GET", "/status"),
        api("GET", "/book?depth=20"),
        api("GET", "/trades?limit=" + MAX_TRADES),
        api("GET", "/orders?state=open&limit=100"),
        api("GET", "/peers"),
      ]);
      state.status = status;
      state.statusAt = Date.now();
      state.book = book;
      state.trades = trades.trades || [];
      state.orders = orders.orders || [];
      state.peers = Array.isArray(peers) ? peers : peers.peers || [];
      renderStatus();
      renderBook();
      renderTrades();
      renderOrders();
      renderPeers();
      if (state.needsToken) {
        state.needsToken = false;
        $("token-form").hidden = true;
        connectStream();
      }
      if (!state.streamLive) setConnection("polling", "polling every " + POLL_MS / 1000 + " s");
      setText("last-update", "Updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) setConnection("down", "node unreachable: " + e.message);
    } finally {
      state.polling = false;
    }
    if (state.again) await refresh();
  }

  function schedule() {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(async () => {
      await refresh();
      schedule();
    }, state.streamLive ? LIVE_POLL_MS : POLL_MS);
  }

  // -- the stream (Server-Sent Events)

  function on(source, type, handler) {
    source.addEventListener(type, (event) => {
      let doc;
      try {
        doc = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      handler(doc);
    });
  }

  function upsert(list, doc, keep) {
    const i = list.findIndex((x) => x.id === doc.id);
    if (i >= 0) list.splice(i, 1);
    if (keep) list.splice(i >= 0 ? i : 0, 0, doc);
  }

  function connectStream() {
    if (!("EventSource" in window) || state.stream) return;
    const t = token();
    const source = new EventSource("/stream" + (t ? "?token=" + encodeURIComponent(t) : ""));
    state.stream = source;
    source.onopen = () => {
      state.streamLive = true;
      setConnection("live", "live");
      schedule();
    };
    source.onerror = () => {
      if (state.streamLive) {
        state.streamLive = false;
        setConnection("polling", "stream lost; polling");
        schedule();
      }
      if (source.readyState === EventSource.CLOSED) {
        // No stream here (404, or a 401 without a token): poll, and try again later.
        state.stream = null;
        setTimeout(connectStream, STREAM_RETRY_MS);
      }
    };
    on(source, "book", (book) => {
      state.book = { bids: book.bids || [], asks: book.asks || [] };
      renderBook();
    });
    on(source, "trade", (trade) => {
      upsert(state.trades, trade, true);
      state.trades.sort(newestFirst);
      state.trades.length = Math.min(state.trades.length, MAX_TRADES);
      renderTrades();
    });
    on(source, "order", (order) => {
      upsert(state.orders, order, order.status === "open" || order.status === "pending");
      renderOrders();
    });
    on(source, "peer", (peer) => {
      const i = state.peers.findIndex((p) => p.node_id === peer.node_id);
      if (i >= 0) state.peers.splice(i, 1);
      if (peer.event === "joined") state.peers.push({ rtt_ms: null, ...peer });
      renderPeers();
    });
    on(source, "status", (status) => {
      // The event's "peers" is a count; the page keeps GET /status's counts by direction.
      const { peers, ...rest } = status;
      state.status = { ...(state.status || {}), ...rest };
      renderStatus();
    });
  }

  // -- actions

  async function placeOrder(event) {
    event.preventDefault();
    const form = event.target;
    const error = $("order-error");
    const result = $("order-result");
    error.textContent = "";
    result.textContent = "";
    const type = form.elements.type.value;
    const body = {
      side: form.elements.side.value,
      type: type,
      amount: form.elements.amount.value.trim(),
    };
    if (type !== "market") body.price = form.elements.price.value.trim();
    if (!body.amount) {
      error.textContent = "Enter an amount, such as 0.25.";
      form.elements.amount.focus();
      return;
    }
    if (type !== "market" && !body.price) {
      error.textContent = "Enter a price, such as 50000.5 (or choose a market order).";
      form.elements.price.focus();
      return;
    }
    const button = $("order-submit");
    button.disabled = true;
    try {
      const doc = await api("POST", "/orders", body);
      result.textContent = "Order " + short(doc.id) + " " + doc.status +
        (doc.reason ? " (" + doc.reason + ")" : "") + (doc.filled && doc.filled !== "0" ? ", filled " + doc.filled : "") + ".";
      if (doc.status === "open") upsert(state.orders, doc, true);
      renderOrders();
    } catch (e) {
      error.textContent = e.message;
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  async function cancelOrder(button) {
    const id = button.dataset.id;
    button.disabled = true;
    $("orders-error").textContent = "";
    try {
      const doc = await api("DELETE", "/orders/" + encodeURIComponent(id));
      if (doc.status !== "open") upsert(state.orders, { id: id }, false);
      renderOrders();
    } catch (e) {
      $("orders-error").textContent = "Cancel failed: " + e.message;
      button.disabled = false;
    }
    refresh();
  }

  function start() {
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { drawn.delete("book"); renderBook(); }, 150);
    });
    $("order-form").addEventListener("submit", placeOrder);
    $("order-type").addEventListener("change", (event) => {
      const market = event.target.value === "market";
      $("order-price").disabled = market;
    });
    $("open-orders").addEventListener("click", (event) => {
      const button = event.target.closest("button.cancel");
      if (button) cancelOrder(button);
    });
    $("book-panel").addEventListener("click", (event) => {
      const button = event.target.closest("button.price");
      if (!button) return;
      $("order-price").value = button.dataset.price;
      const side = button.classList.contains("ask") ? "buy" : "sell";
      document.querySelector('input[name="side"][value="' + side + '"]').checked = true;
      $("order-amount").focus();
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setToken($("token").value.trim());
      $("token").value = "";
      if (state.stream) { state.stream.close(); state.stream = null; state.streamLive = false; }
      refresh().then(connectStream);
    });
    $("token-forget").addEventListener("click", () => {
      setToken("");
      if (state.stream) { state.stream.close(); state.stream = null; state.streamLive = false; }
      refresh().then(() => { if (!state.needsToken) connectStream(); });
    });
    refresh().then(() => {
      schedule();
      if (!state.needsToken) connectStream();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
