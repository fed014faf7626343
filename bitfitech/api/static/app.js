// bitfi dashboard: an exchange's trading view of this node, read and steered
// through the node's own JSON API (same origin, no libraries).
//
// Data: polling (GET /status, /markets, /ticker, /book, /trades, /orders,
// /peers every 2 s, and soon after each action) always works.  The live
// stream (GET /stream, Server-Sent Events) updates the page at once and
// slows polling to a resync every 10 s.  With an API token the page never
// puts a secret in a URL: it asks POST /stream/ticket for a single-use
// ticket and opens /stream?ticket=...; when the stream drops it closes it
// (EventSource would retry with the spent ticket) and opens a new one with
// a fresh ticket.  A node without tickets (404) is polled.  The header's
// 24 h figures are GET /ticker's.
//
// Money: prices and amounts are the API's decimal strings, shown as they
// are (padded with zeros to line up a column, grouped by thousands).  Sums,
// differences and products shown (running totals, spread, mid, an order's
// total) are exact, on BigInt; Number() only
// places things on the depth chart and sizes the depth bars.
//
// Times: every instant of the API is unix milliseconds, shown in local
// time; durations are *_ms, shown in words.  (The page is served by the node
// whose API it reads, so it never meets an older convention.)
//
// Markets: a node may carry several (GET /markets, the first first).  The
// page shows one, state.market: the one the hash names (#ETH-USD), else
// the first.  Every market request goes through marketPath(): today's
// paths (/book, /orders, /stream, ...) for the node's first market, which
// they serve, and /markets/{slug}/... for another.  The selector in the
// header sets the hash; a switch forgets the last market's book, trades
// and orders, closes its stream and opens the new market's (a fresh
// ticket), and reads the node again.  A node without GET /markets has one
// market: its pair, on today's paths.
"use strict";

(function () {
  const POLL_MS = 2000;
  const LIVE_POLL_MS = 10000;
  const SOON_MS = 250;
  const STREAM_RETRY_MIN_MS = 1000;
  const STREAM_RETRY_MAX_MS = 30000;
  const TOKEN_KEY = "bitfi.token";
  const BOOK_DEPTH = 20;
  const TRADES_LIMIT = 100;
  const TAPE_ROWS = 50;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    status: null,
    statusAt: 0,
    book: { bids: [], asks: [] },
    trades: [],
    ticker: null,
    orders: [],
    history: [],
    peers: [],
    loaded: false,
    needsToken: false,
    markets: null, // GET /markets's rows, [] from a node without it; null until read
    market: null, // the market shown ("ETH/USD"); null: the node's one pair
    marketReady: false, // whether the market shown has been read since it was chosen
    poll: { timer: null, running: false, again: false, soon: null },
    stream: { source: null, live: false, opening: false, supported: true, retryMs: STREAM_RETRY_MIN_MS, timer: null },
  };

  const $ = (id) => document.getElementById(id);

  // -- exact decimals: {n: BigInt, s: scale} is the number n / 10^s

  const DEC_RE = /^([+-])?(\d+)(?:\.(\d+))?$/;

  function dec(text) {
    if (text === null || text === undefined) return null;
    const m = DEC_RE.exec(String(text).trim());
    if (!m) return null;
    const frac = m[3] || "";
    const n = BigInt(m[2] + frac);
    return { n: m[1] === "-" ? -n : n, s: frac.length };
  }

  const ZERO = { n: 0n, s: 0 };

  function scaled(d, s) {
    return d.n * 10n ** BigInt(s - d.s);
  }

  function decAdd(a, b) {
    const s = Math.max(a.s, b.s);
    return { n: scaled(a, s) + scaled(b, s), s: s };
  }

  function decSub(a, b) {
    const s = Math.max(a.s, b.s);
    return { n: scaled(a, s) - scaled(b, s), s: s };
  }

  function decMul(a, b) {
    return { n: a.n * b.n, s: a.s + b.s };
  }

  function decCmp(a, b) {
    const s = Math.max(a.s, b.s);
    const x = scaled(a, s), y = scaled(b, s);
    return x < y ? -1 : x > y ? 1 : 0;
  }

  function decHalf(a) {
    return decTrim({ n: a.n * 5n, s: a.s + 1 });
  }

  function decTrim(d) {
    let { n, s } = d;
    while (s > 0 && n % 10n === 0n) {
      n /= 10n;
      s -= 1;
    }
    return { n: n, s: s };
  }

  // n / d rounded half away from zero, for BigInts.
  function divRound(n, d) {
    const negative = (n < 0n) !== (d < 0n);
    const an = n < 0n ? -n : n, ad = d < 0n ? -d : d;
    const q = (an * 2n + ad) / (ad * 2n);
    return negative ? -q : q;
  }

  // 100 * a / b with `places` decimals, or null if b is zero.
  function decPercent(a, b, places) {
    if (b.n === 0n) return null;
    const n = a.n * 10n ** BigInt(b.s) * 100n * 10n ** BigInt(places);
    const d = b.n * 10n ** BigInt(a.s);
    return { n: divRound(n, d), s: places };
  }

  // The plain decimal string of d: at least `places` decimals (zeros added,
  // never digits taken away), the integer part grouped by thousands if asked.
  function decText(d, places, group) {
    const negative = d.n < 0n;
    let digits = (negative ? -d.n : d.n).toString().padStart(d.s + 1, "0");
    let whole = d.s ? digits.slice(0, -d.s) : digits;
    let frac = d.s ? digits.slice(-d.s) : "";
    if (places !== undefined && frac.length < places) frac = frac.padEnd(places, "0");
    if (group) whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (negative ? "-" : "") + whole + (frac ? "." + frac : "");
  }

  function plain(d) {
    return decText(decTrim(d));
  }

  // An API decimal string for display: padded to `places`, grouped.
  function money(text, places) {
    const d = dec(text);
    return d ? decText(d, places, true) : text === null || text === undefined ? "—" : String(text);
  }

  function scaleOf(text) {
    const d = dec(text);
    return d ? d.s : 0;
  }

  // The decimals a column needs to line up: the most any value has, at most 8.
  function placesOf(values) {
    let places = 0;
    for (const v of values) places = Math.max(places, scaleOf(v));
    return Math.min(places, 8);
  }

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

  // -- the API

  // An error answer: {"error": code, "message": text, "field": name} (the
  // API's codes), or {"error": "code: text"} and {"error": "text"} (nodes
  // from before the codes).
  class ApiError extends Error {
    constructor(status, doc, fallback) {
      let code = "", message = fallback, field = null;
      if (doc && typeof doc.error === "string") {
        if (typeof doc.message === "string") {
          code = doc.error;
          message = doc.message;
        } else {
          const m = /^([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?:: ([\s\S]*))?$/.exec(doc.error);
          if (m) {
            code = m[1];
            message = m[2] || "";
          } else {
            message = doc.error;
          }
        }
        if (typeof doc.field === "string") field = doc.field;
      }
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
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
      throw new ApiError(401, doc, "a token is needed");
    }
    if (!response.ok) throw new ApiError(response.status, doc, response.status + " " + response.statusText);
    return doc;
  }

  // -- small DOM helpers

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child !== null && child !== undefined) node.append(child);
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

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  // A long hex id shown short, the whole of it in the title and for copying.
  function setHash(id, value) {
    const node = $(id);
    const full = value || "";
    const shown = full.length > 20 ? full.slice(0, 10) + "…" + full.slice(-6) : full || "—";
    if (node.textContent !== shown) node.textContent = shown;
    node.title = full;
    node.dataset.full = full;
  }

  function short(id) {
    return id ? String(id).slice(0, 12) + "…" : "—";
  }

  // A count grouped by thousands (100,000), whatever the browser's locale.
  function grouped(n) {
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function plural(n, one, many) {
    return grouped(n) + " " + (n === 1 ? one : many);
  }

  const drawn = new Map();

  // Tell whether `data` differs from what `key` last drew (and remember it):
  // unchanged parts are not rebuilt, so a button being clicked stays put.
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
    const chip = $("connection");
    chip.dataset.mode = mode;
    setText("connection-text", text);
  }

  function setBanner(text) {
    const banner = $("banner");
    banner.hidden = !text;
    if (text && banner.textContent !== text) banner.textContent = text;
  }

  // -- times and durations

  // An instant of the API (unix ms), or null.
  function instantMs(value) {
    return typeof value === "number" ? value : null;
  }

  const two = (n) => String(n).padStart(2, "0");

  function hms(ms) {
    const d = new Date(ms);
    return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }

  // Unix ms as local HH:MM:SS.mmm (fair times differ by milliseconds).
  function clockTime(ms) {
    return hms(ms) + "." + String(new Date(ms).getMilliseconds()).padStart(3, "0");
  }

  // Local time, with the date when not today.
  function when(ms) {
    if (ms === null) return "—";
    const d = new Date(ms);
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return hms(ms);
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " + hms(ms);
  }

  function duration(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "—";
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 1) return "under a second";
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    const h = Math.floor(m / 60);
    if (h < 24) return h + " h " + (m % 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  function age(ms) {
    if (ms < 0) return "just now";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s ago";
    return Math.floor(ms / 60000) + " min ago";
  }

  // -- the markets: which one the page shows, and where its routes are

  // The node's first market, whose routes today's paths are.
  function firstMarket() {
    if (state.markets && state.markets.length) return state.markets[0].market;
    return state.status ? state.status.pair : null;
  }

  function onFirstMarket() {
    return !state.market || state.market === firstMarket();
  }

  function marketRow(name) {
    return (state.markets || []).find((row) => row.market === name) || null;
  }

  // A market's name as a path segment and a hash: BTC/USD is BTC-USD.
  function slugOf(name) {
    const row = marketRow(name);
    return row && row.slug ? row.slug : String(name).replace("/", "-");
  }

  // Where market route `p` ("/book?depth=20") is for the market shown.
  function marketPath(p) {
    return onFirstMarket() ? p : "/markets/" + encodeURIComponent(slugOf(state.market)) + p;
  }

  // What the hash says of the market: "" for no hash, null for an anchor
  // of the page (#trade), else a market's slug in capitals ("ETH-USD").
  function hashSlug() {
    let text = location.hash.replace(/^#/, "");
    try {
      text = decodeURIComponent(text);
    } catch (e) {
      return null;
    }
    if (!text) return "";
    if (document.getElementById(text) || !/^[^/-]+[/-][^/-]+$/.test(text)) return null;
    return text.replace("/", "-").toUpperCase();
  }

  function forgetHash() {
    history.replaceState(null, "", location.pathname + location.search);
  }

  // The market to show among `rows`: the hash's, else the one shown, else
  // the first.  A hash naming a market the node does not carry is dropped
  // once (the first market is shown), so it never asks again.
  function wantedMarket(rows) {
    if (!rows.length) return null;
    const slug = hashSlug();
    if (slug) {
      const row = rows.find((r) => (r.slug || r.market.replace("/", "-")).toUpperCase() === slug);
      if (row) return row.market;
      forgetHash();
      return rows[0].market;
    }
    if (slug === "") return rows[0].market;
    return rows.some((r) => r.market === state.market) ? state.market : rows[0].market;
  }

  // GET /markets's rows; [] from a node that has no such route (one market).
  async function fetchMarkets() {
    try {
      const doc = await api("GET", "/markets");
      return Array.isArray(doc) ? doc : (doc && doc.markets) || [];
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return [];
      throw e;
    }
  }

  // Take GET /markets's rows, and show the market they and the hash ask for.
  function useMarkets(rows) {
    state.markets = rows;
    const wanted = wantedMarket(rows);
    if (state.market === null) state.market = wanted;
    else if (wanted !== null) showMarket(wanted);
    renderMarkets();
  }

  function renderMarkets() {
    const rows = state.markets || [];
    const select = $("market");
    const several = rows.length > 1;
    $("market-picker").hidden = !several;
    // The selector says the pair; the heading keeps it for screen readers.
    $("pair").classList.toggle("visually-hidden", several);
    if (changed("markets", rows.map((r) => r.market))) {
      select.replaceChildren(...rows.map((r) => el("option", { value: r.market, text: r.market })));
    }
    if (state.market && select.value !== state.market) select.value = state.market;
    // An example price of this market, where it has one.
    const row = marketRow(state.market);
    const example = row && (row.last || row.best_bid || row.best_ask);
    $("order-price").placeholder = example || "50000.5";
  }

  // Show market `name`: forget the last one's book, trades, orders and
  // form, stream the new one's (with a fresh ticket), and read it.
  function showMarket(name) {
    if (!name || name === state.market) return;
    state.market = name;
    state.marketReady = false;
    state.book = { bids: [], asks: [] };
    state.trades = [];
    state.orders = [];
    state.history = [];
    state.ticker = null;
    for (const id of ["order-price", "order-amount"]) $(id).value = "";
    clearFormErrors();
    setText("order-result", "");
    setText("orders-error", "");
    renderMarkets();
    renderAll();
    closeStream();
    state.stream.retryMs = STREAM_RETRY_MIN_MS;
    if (state.loaded) {
      setConnection("connecting", "loading " + name + "…");
      openStream();
    }
    refresh();
  }

  // The selector: the hash names the market chosen (a reload keeps it).
  function chooseMarket(name) {
    const slug = slugOf(name);
    if (hashSlug() !== slug.toUpperCase()) location.hash = slug;
    showMarket(name);
  }

  // The hash changed (typed, or back and forward): show what it names.
  function followHash() {
    if (!state.markets || !state.markets.length || hashSlug() === null) return;
    showMarket(wantedMarket(state.markets));
  }

  // -- the market's units

  function units() {
    const pair = state.market || (state.status && state.status.pair) || (state.ticker && state.ticker.pair) || "BTC/USD";
    const [base, quote] = pair.split("/");
    return { pair: pair, base: base || "base", quote: quote || "quote" };
  }

  function renderUnits() {
    const u = units();
    if (!changed("units", u)) return;
    for (const node of document.querySelectorAll("[data-unit]")) {
      node.textContent = node.dataset.unit === "base" ? u.base : u.quote;
    }
    updateSubmit();
  }

  // Decimals for prices and amounts: the most the book and the trades use.
  function places() {
    const { bids, asks } = state.book;
    const levels = bids.concat(asks);
    const trades = state.trades.slice(0, TAPE_ROWS);
    return {
      price: placesOf(levels.map((l) => l[0]).concat(trades.map((t) => t.price))),
      amount: placesOf(levels.map((l) => l[1]).concat(trades.map((t) => t.amount))),
    };
  }

  // -- the header: the 24 h ticker, peers and sync

  function signed(text, places) {
    const d = dec(text);
    if (!d) return "—";
    return (d.n > 0n ? "+" : "") + decText(d, places, true);
  }

  function renderTicker() {
    const t = state.ticker;
    const p = places();
    const last = $("last-price");
    const newest = state.trades[0];
    if (!t || t.last === null || t.last === undefined) {
      setText("last-price", "—");
      last.title = "no trades yet";
      last.className = "num";
    } else {
      setText("last-price", money(t.last, p.price));
      // Up or down against the trade before the last one.
      const before = state.trades[1] ? dec(state.trades[1].price) : null;
      const now = dec(t.last);
      const move = before && now ? decCmp(now, before) : 0;
      last.className = "num " + (move > 0 ? "up" : move < 0 ? "down" : newest ? newest.side === "buy" ? "up" : "down" : "");
      last.title = newest && typeof newest.time === "number" ? "last trade at " + when(newest.time) : "";
    }
    const change = $("change");
    if (t && t.change !== null && t.change !== undefined) {
      const d = dec(t.change);
      change.className = "num " + (d && d.n > 0n ? "up" : d && d.n < 0n ? "down" : "");
      const pct = dec(t.change_pct);
      setText("change", signed(t.change, p.price) + (pct ? " (" + (pct.n > 0n ? "+" : "") + decText(pct) + " %)" : ""));
    } else {
      change.className = "num";
      setText("change", "—");
    }
    setText("high", t && t.high ? money(t.high, p.price) : "—");
    setText("low", t && t.low ? money(t.low, p.price) : "—");
    setText("volume", t && t.volume ? money(t.volume) : "—");
    setText("quote-volume", t && t.quote_volume ? money(t.quote_volume, 2) : "—");
    const note = t ? plural(t.trades ?? 0, "trade", "trades") + " in the last 24 h" : "";
    $("ticker").title = note;
  }

  function renderHealth() {
    const s = state.status;
    if (!s) return;
    const p = s.peers || {};
    const count = (p.inbound ?? 0) + (p.outbound ?? 0);
    setText("peer-count", String(count));
    setText("peer-word", count === 1 ? "peer" : "peers");
    const chip = $("peer-chip");
    chip.dataset.state = count ? "ok" : "warn";
    chip.title = (p.inbound ?? 0) + " inbound, " + (p.outbound ?? 0) + " outbound" +
      (p.handshaking ? ", " + p.handshaking + " handshaking" : "") +
      (p.known_addresses !== undefined ? "; " + p.known_addresses + " known addresses" : "");
    const sync = s.sync;
    const syncChip = $("sync-chip");
    if (!sync) {
      syncChip.dataset.state = "none";
      setText("sync-text", "no sync");
    } else if (sync.state === "synced") {
      syncChip.dataset.state = "ok";
      setText("sync-text", "synced");
    } else if (sync.state === "syncing") {
      syncChip.dataset.state = "busy";
      const share = syncShare(sync);
      setText("sync-text", "syncing " + (share === null ? "" : Math.floor(share * 100) + " %, ") +
        plural(sync.behind ?? 0, "event", "events") + " behind");
    } else {
      syncChip.dataset.state = "warn";
      setText("sync-text", sync.state || "sync ?");
    }
    syncChip.title = syncLine(sync);
    showSyncBar($("sync-bar"), sync);
    showSyncBar($("sync-bar-node"), sync);
  }

  // The share of the known events held while syncing (0 to 1), else null.
  function syncShare(sync) {
    if (!sync || sync.state !== "syncing" || !(sync.known > 0)) return null;
    return Math.min(1, Math.max(0, (sync.events ?? 0) / sync.known));
  }

  // A progress bar of the sync: shown while the node catches up.
  function showSyncBar(bar, sync) {
    const share = syncShare(sync);
    bar.hidden = share === null;
    if (share !== null) {
      bar.value = share;
      bar.title = Math.floor(share * 100) + " % of the known events held";
    }
  }

  function etaMs(sync) {
    return typeof sync.eta_ms === "number" ? sync.eta_ms : null;
  }

  function syncLine(sync) {
    if (!sync) return "this node does not sync (no gossip)";
    const eta = etaMs(sync);
    return sync.state + ": " + grouped(sync.events ?? 0) + " of " + grouped(sync.known ?? 0) +
      " known events held" + (sync.behind ? ", " + grouped(sync.behind) + " behind" : "") +
      (sync.rate ? ", " + Number(sync.rate).toFixed(1) + " events a second" : "") +
      (eta !== null && sync.behind ? ", about " + duration(eta) + " left" : "");
  }

  // -- the node panel

  // GET /status as the market shown sees it: its top-level market figures
  // are the first market's; another's events, state hash and ordering are
  // its GET /markets row's, and `pointsOf` names whose sync, fair-order
  // points and witness chains /status gives.
  function shownStatus() {
    const s = state.status;
    if (!s || onFirstMarket()) return s;
    const row = marketRow(state.market) || {};
    return { ...s, pair: state.market, events: row.events, state_hash: row.state_hash,
      ordering: row.ordering ?? s.ordering, pointsOf: s.pair };
  }

  function renderStatus() {
    const s = shownStatus();
    if (!s) return;
    const count = (state.markets || []).length;
    setText("pair", s.pair || "");
    setText("network-tag", s.network || "");
    setHash("node-id", s.node_id);
    setText("network", (s.network || "?") + " / " + (s.pair || "?") + (count > 1 ? " (one of " + count + " markets)" : ""));
    setText("version", (s.user_agent || "bitfi") + (s.p2p ? ", p2p port " + s.p2p.port + (s.p2p.tls ? " (TLS)" : " (plain TCP)") : ""));
    setText("events", s.events === undefined ? "—" : String(s.events));
    setHash("state-hash", s.state_hash);
    setText("sync", syncLine(s.sync) + (s.pointsOf && s.sync ? " in " + s.pointsOf : ""));
    const p = s.peers || {};
    setText("peer-counts", (p.inbound ?? 0) + " in, " + (p.outbound ?? 0) + " out" +
      (p.handshaking ? ", " + p.handshaking + " handshaking" : "") +
      (p.known_addresses !== undefined ? " · " + p.known_addresses + " known addresses" : "") +
      (p.bans ? " · " + plural(p.bans, "ban", "bans") : ""));
    setText("mdns", s.mdns ? "on" + (s.mdns.interface ? " (" + s.mdns.interface + ")" : "") +
      (s.mdns.discovered !== undefined ? ", " + s.mdns.discovered + " discovered" : "") : s.mdns === null ? "off" : "—");
    const announced = s.dht ? instantMs(s.dht.announced_at) : null;
    const dhtFamilies = s.dht && s.dht.families ? Object.keys(s.dht.families) : [];
    setText("dht", s.dht ? "on, port " + s.dht.port + ", " + (s.dht.routing_table_size ?? 0) + " in routing table" +
      (dhtFamilies.length > 1 ? " (" + dhtFamilies.map((f) => f.replace("ipv", "IPv") + " " +
        (s.dht.families[f].routing_table_size ?? 0)).join(", ") + ")" :
        dhtFamilies.length === 1 && dhtFamilies[0] === "ipv6" ? " over IPv6" : "") +
      (s.dht.peers_found !== undefined ? ", " + s.dht.peers_found + " peers found" : "") +
      (announced ? ", announced " + when(announced) : "") : s.dht === null ? "off" : "—");
    setText("reach", reachLine(s.reachability));
    const uptime = typeof s.uptime_ms === "number" ? s.uptime_ms : null;
    if (uptime !== null) setText("uptime", duration(uptime));
    renderOrdering(s);
    if (s.pair) document.title = "bitfi " + s.pair + (state.ticker && state.ticker.last ? " " + state.ticker.last : "");
  }

  // Whether peers can dial the node (GET /status reachability).
  function reachLine(r) {
    if (!r) return "—";
    if (r.state === "public") return "yes, at " + r.address;
    if (r.state === "mapped") return "yes, at " + r.address + " (router mapping" + (r.nat && r.nat.method ? ", " + r.nat.method : "") + ")";
    if (r.state === "outbound-only") return "no: outbound links only (" + (r.reason || "peers cannot dial it") + ")";
    return "not known yet" + (r.checking ? " (checking)" : "");
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
    // Another market than the first: /status's points are the first's, and say so.
    const of = s.pointsOf ? " in " + s.pointsOf : "";
    if (fair) {
      setBadge("ordering", "fair", "fair order, " + plural(w.n, "witness", "witnesses"),
        "events are ordered by the witnesses' stamps (up to " + w.f + " may be faulty)" +
        (w.me === null || w.me === undefined ? "" : "; this node is one of them"));
      setText("settled-point", point(w.settled_through_ms, w.settled_events) + of);
      setText("final-point", point(w.final_through_ms, w.final_events) + of);
    } else if (s.ordering !== undefined) {
      setBadge("ordering", "author", "author clocks",
        "no witnesses: events are ordered by their authors' Lamport clocks");
      // Lamport times follow the authors' clocks: nodes that say so give the time.
      if ("settled_through_ms" in s) setText("settled-point", (s.settled_through_ms === null ? "not yet" : "through " + clockTime(s.settled_through_ms)) + of);
      else setText("settled-point", "through Lamport " + (s.settled_through ?? 0) + of);
      $("settled-point").title = "Lamport " + (s.settled_through ?? 0);
      setText("final-point", "never (no witnesses)");
    }
    renderWitnesses(fair ? w : null, s.pointsOf);
  }

  function renderWitnesses(w, pointsOf) {
    const chains = w ? w.chains || [] : [];
    const at = state.statusAt;
    if (!changed("witnesses", [w, at, pointsOf])) return;
    if (!w) {
      setText("witnesses-summary", "This network names no witnesses: events are ordered by " +
        "their authors' clocks, trades settle after a delay and are never final.");
      fill($("witnesses").tBodies[0], [], "no witnesses", 6);
      return;
    }
    const flagged = Object.keys(w.flagged || {}).length;
    setText("witnesses-summary", (pointsOf ? "In " + pointsOf + ", the node's first market: " : "") + "n = " + w.n + ", f = " + w.f + ": a trade is settled once " +
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
        el("td", { class: "n", text: String(c.seq ?? 0) }),
        el("td", c.t === null || c.t === undefined ? { text: "—" } : { title: "its clock: " + new Date(c.t).toISOString(), text: age(at - c.t) }),
        el("td", { class: "n", text: c.lag_ms === null || c.lag_ms === undefined ? "—" : String(c.lag_ms) }),
        el("td", { class: "n", text: String(c.waiting ?? 0) }),
        el("td", {}, [stateCell]),
      ]);
    });
    fill($("witnesses").tBodies[0], rows, "no witness chains", 6);
  }

  // -- the ladder: asks above (best at the bottom), the spread, bids below

  function runningTotals(levels) {
    let total = ZERO;
    return levels.map(([price, amount, count]) => {
      const d = dec(amount);
      if (d) total = decAdd(total, d);
      return { price: price, amount: amount, count: count, total: plain(total) };
    });
  }

  function renderBook() {
    const p = places();
    if (!changed("book", [state.book, p, state.marketReady])) return;
    const bids = runningTotals(state.book.bids);
    const asks = runningTotals(state.book.asks);
    const deepest = Math.max(0, ...bids.concat(asks).map((l) => Number(l.total)));
    const largest = Math.max(0, ...bids.concat(asks).map((l) => Number(l.amount)));
    const share = (value, of) => (of > 0 ? Math.min(100, (100 * Number(value)) / of).toFixed(1) + "%" : "0%");
    const rows = (levels, side) => levels.map((l) => {
      const row = el("div", {
        class: "level " + side, role: "row", "data-price": l.price,
        title: plural(l.count, "order", "orders") + " at " + l.price + "; " + l.total + " up to here",
      }, [
        el("span", { role: "cell", class: "price" }, [
          el("button", { type: "button", class: "price " + side, "data-price": l.price, "data-side": side,
            "aria-label": (side === "ask" ? "Ask " : "Bid ") + l.price + ": use this price", text: money(l.price, p.price) }),
        ]),
        el("span", { role: "cell", class: "amount", text: money(l.amount, p.amount) }),
        el("span", { role: "cell", class: "total", text: money(l.total, p.amount) }),
      ]);
      // Set through the CSSOM: the page's policy allows no inline style.
      row.style.setProperty("--depth", share(l.total, deepest));
      row.style.setProperty("--size", share(l.amount, largest));
      return row;
    });
    const empty = (text) => [el("p", { class: "placeholder", text: text })];
    const askRows = rows(asks, "ask");
    const bidRows = rows(bids, "bid");
    const ready = state.marketReady;
    $("asks").replaceChildren(...(askRows.length ? askRows : empty(ready ? "no asks" : "Loading the book…")));
    $("bids").replaceChildren(...(bidRows.length ? bidRows : empty(ready ? "no bids" : "Loading the book…")));
    renderSpread();
    renderDepth();
  }

  function renderSpread() {
    const p = places();
    const bid = state.book.bids.length ? dec(state.book.bids[0][0]) : null;
    const ask = state.book.asks.length ? dec(state.book.asks[0][0]) : null;
    if (bid && ask) {
      const mid = decHalf(decAdd(bid, ask));
      const spread = decSub(ask, bid);
      const pct = decPercent(spread, mid, 3);
      setText("mid-price", decText(mid, p.price, true));
      setText("spread", decText(spread, p.price, true));
      setText("spread-pct", pct ? "(" + decText(pct) + " %)" : "");
      $("spread-row").title = "best bid " + plain(bid) + ", best ask " + plain(ask);
    } else {
      setText("mid-price", "—");
      setText("spread", bid || ask ? "one side only" : "empty book");
      setText("spread-pct", "");
      $("spread-row").title = "";
    }
  }

  // -- the depth chart

  let depthGeometry = null;

  // About `count` round steps covering lo..hi.
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const power = 10 ** Math.floor(Math.log10(raw));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * power >= raw) return f * power;
    return 10 * power;
  }

  function stepDecimals(step) {
    let d = 0;
    while (d < 10 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-9) d += 1;
    return d;
  }

  function axisLabel(value, decimals) {
    return decText(dec(value.toFixed(decimals)) || ZERO, decimals, true);
  }

  function renderDepth() {
    const chart = $("depth-chart");
    const box = chart.getBoundingClientRect();
    const W = Math.max(260, Math.round(box.width) || 600);
    const H = Math.max(160, Math.round(box.height) || 260);
    const L = 10, R = 58, T = 18, B = 24;
    chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    const keep = [chart.querySelector("title")];
    const bids = runningTotals(state.book.bids);
    const asks = runningTotals(state.book.asks);
    const all = bids.concat(asks);
    $("depth-readout").hidden = true;
    if (!all.length) {
      depthGeometry = null;
      chart.replaceChildren(...keep, svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", text: state.loaded && state.marketReady ? "the book is empty" : "loading…" }));
      return;
    }
    const bestBid = bids.length ? Number(bids[0].price) : null;
    const bestAsk = asks.length ? Number(asks[0].price) : null;
    const midDec = bids.length && asks.length ? decHalf(decAdd(dec(bids[0].price), dec(asks[0].price))) : null;
    const mid = midDec ? Number(plain(midDec)) : bestBid ?? bestAsk;
    const prices = all.map((l) => Number(l.price));
    let half = Math.max(...prices.map((x) => Math.abs(x - mid)));
    if (!(half > 0)) half = Math.max(Math.abs(mid) * 0.01, 1);
    half *= 1.08;
    const lo = mid - half, hi = mid + half;
    const top = Math.max(...all.map((l) => Number(l.total))) * 1.12 || 1;
    const x = (price) => L + ((Number(price) - lo) / (hi - lo)) * (W - L - R);
    const y = (total) => H - B - (Number(total) / top) * (H - T - B);
    const base = H - B;
    const parts = [];

    // Grid and axes: amounts on the right, prices along the bottom.
    const yStep = niceStep(top, 4);
    const yDecimals = stepDecimals(yStep);
    for (let v = yStep; v < top; v += yStep) {
      parts.push(svg("line", { x1: L, y1: y(v), x2: W - R, y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: W - R + 6, y: y(v) + 4, class: "label", text: axisLabel(v, yDecimals) }));
    }
    parts.push(svg("text", { x: W - R + 6, y: T - 6, class: "label unit", text: units().base }));
    const xStep = niceStep(hi - lo, Math.max(3, Math.floor((W - L - R) / 90)));
    const xDecimals = stepDecimals(xStep);
    for (let v = Math.ceil(lo / xStep) * xStep; v <= hi; v += xStep) {
      parts.push(svg("line", { x1: x(v), y1: base, x2: x(v), y2: base + 4, class: "axis" }));
      parts.push(svg("text", { x: x(v), y: H - 6, "text-anchor": "middle", class: "label", text: axisLabel(v, xDecimals) }));
    }
    parts.push(svg("line", { x1: L, y1: base, x2: W - R, y2: base, class: "axis" }));
    parts.push(svg("line", { x1: W - R, y1: T, x2: W - R, y2: base, class: "axis" }));

    function area(levels, side) {
      if (!levels.length) return;
      const edge = side === "bid" ? L : W - R;
      let d = "M" + x(levels[0].price) + "," + base;
      let level = base;
      for (const l of levels) {
        d += " L" + x(l.price) + "," + level + " L" + x(l.price) + "," + y(l.total);
        level = y(l.total);
      }
      const line = d + " L" + edge + "," + level;
      parts.push(svg("path", { d: line + " L" + edge + "," + base + " Z", class: "depth " + side }));
      parts.push(svg("path", { d: line, class: "edge " + side }));
    }
    area(bids, "bid");
    area(asks, "ask");

    if (midDec) {
      const mx = x(mid);
      parts.push(svg("line", { x1: mx, y1: T, x2: mx, y2: base, class: "mid" }));
      parts.push(svg("text", { x: mx, y: T - 6, "text-anchor": "middle", class: "mid-label", text: "mid " + decText(midDec, places().price, true) }));
    }
    const hover = svg("g", { class: "hover", visibility: "hidden" }, [
      svg("line", { class: "cross", x1: 0, y1: T, x2: 0, y2: base }),
      svg("line", { class: "cross", x1: L, y1: 0, x2: W - R, y2: 0 }),
      svg("circle", { r: 4 }),
    ]);
    parts.push(hover);
    parts.push(svg("rect", { x: L, y: T, width: W - L - R, height: base - T, class: "catch" }));
    chart.replaceChildren(...keep, ...parts);
    depthGeometry = { bids, asks, mid, lo, hi, x, y, L, R, T, B, W, H, hover };
  }

  // The level a pointer at price `p` points at: the cumulative depth from
  // the best price out to it, on the side of the mid it is on (the best
  // level itself between it and the mid).
  function depthAt(g, p) {
    const side = p <= g.mid ? "bid" : "ask";
    const levels = side === "bid" ? g.bids : g.asks;
    if (!levels.length) return null;
    let found = levels[0];
    for (const l of levels) if (side === "bid" ? Number(l.price) >= p : Number(l.price) <= p) found = l;
    return { side: side, level: found };
  }

  function valueUpTo(levels, last) {
    let value = ZERO;
    for (const l of levels) {
      value = decAdd(value, decMul(dec(l.price), dec(l.amount)));
      if (l === last) break;
    }
    return value;
  }

  function showReadout(event) {
    const g = depthGeometry;
    const readout = $("depth-readout");
    if (!g) return;
    const chart = $("depth-chart");
    const box = chart.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * g.W;
    const price = g.lo + ((px - g.L) / (g.W - g.L - g.R)) * (g.hi - g.lo);
    const at = depthAt(g, price);
    if (!at) {
      g.hover.setAttribute("visibility", "hidden");
      readout.hidden = true;
      return;
    }
    const { side, level } = at;
    const lx = g.x(level.price), ly = g.y(level.total);
    const [vertical, horizontal, dot] = g.hover.children;
    vertical.setAttribute("x1", lx);
    vertical.setAttribute("x2", lx);
    horizontal.setAttribute("y1", ly);
    horizontal.setAttribute("y2", ly);
    dot.setAttribute("cx", lx);
    dot.setAttribute("cy", ly);
    g.hover.setAttribute("class", "hover " + side);
    g.hover.setAttribute("visibility", "visible");
    const u = units();
    const p = places();
    const value = valueUpTo(side === "bid" ? g.bids : g.asks, level);
    readout.replaceChildren(
      el("strong", { class: side, text: (side === "bid" ? "Bids at " : "Asks at ") + money(level.price, p.price) + (side === "bid" ? " or more" : " or less") }),
      el("span", { text: "Amount " + money(level.total, p.amount) + " " + u.base }),
      el("span", { text: "Value " + decText(value, 2, true) + " " + u.quote }),
      el("span", { class: "muted", text: plural((side === "bid" ? g.bids : g.asks).indexOf(level) + 1, "level", "levels") }),
    );
    readout.hidden = false;
    readout.className = "readout " + side;
    // Beside the point, kept inside the chart.
    const scale = box.width / g.W;
    const left = lx * scale + 12, topPx = Math.max(4, ly * (box.height / g.H) - 40);
    const width = readout.offsetWidth || 180;
    readout.style.left = (left + width > box.width ? lx * scale - width - 12 : left) + "px";
    readout.style.top = topPx + "px";
  }

  function hideReadout() {
    if (depthGeometry) depthGeometry.hover.setAttribute("visibility", "hidden");
    $("depth-readout").hidden = true;
  }

  // -- the trade tape

  const TRADE_STATES = {
    tentative: "tentative: may still be revised",
    settled: "settled: no event this node has not seen can change it",
    final: "final: every witness's stamps are past it",
  };

  function tradeStatus(trade) {
    if (trade.status in TRADE_STATES) return trade.status;
    return trade.settled ? "settled" : "tentative";
  }

  function statusBadge(status) {
    return el("span", { class: "badge " + status, title: TRADE_STATES[status], text: status });
  }

  function renderTrades() {
    const p = places();
    const shown = state.trades.slice(0, TAPE_ROWS);
    if (!changed("trades", [shown.map((t) => [t.id, tradeStatus(t), t.price, t.amount]), p, state.marketReady])) return;
    const rows = shown.map((t) => {
      const status = tradeStatus(t);
      const side = t.side === "sell" ? "sell" : "buy";
      return el("tr", { class: "trade " + status + " " + side, "data-id": t.id, title: "taker " + side + "s; " + TRADE_STATES[status] }, [
        el("td", { class: "time", text: typeof t.time === "number" ? hms(t.time) : "—", title: typeof t.time === "number" ? new Date(t.time).toString() : "" }),
        el("td", { class: "n price " + side }, [
          el("span", { class: "visually-hidden", text: side + " " }),
          el("span", { class: "v", text: money(t.price, p.price) }),
          el("span", { class: "arrow", "aria-hidden": "true", text: side === "buy" ? " ▲" : " ▼" }),
        ]),
        el("td", { class: "n amount", text: money(t.amount, p.amount) }),
        el("td", {}, [statusBadge(status)]),
      ]);
    });
    fill($("trades").tBodies[0], rows, state.marketReady ? "no trades yet" : "Loading trades…", 4);
  }

  // -- this node's orders and trades

  function renderOrders() {
    const p = places();
    if (!changed("orders", [state.orders.map((o) => [o.id, o.status, o.remaining, o.filled]), p, state.marketReady])) return;
    setText("orders-count", state.orders.length ? String(state.orders.length) : "");
    const rows = state.orders.map((o) => {
      const cancel = el("button", { type: "button", class: "cancel", "data-id": o.id,
        "aria-label": "Cancel " + o.side + " order at " + (o.price ?? "market") + " for " + o.remaining, text: "Cancel" });
      return el("tr", { "data-id": o.id, "data-price": o.price ?? "" }, [
        el("td", { class: "time", text: when(instantMs(o.created_at)) }),
        el("td", { class: o.side, text: o.side }),
        el("td", { class: "opt", text: o.type.replace("_", " ") }),
        el("td", { class: "n", text: o.price === null ? "market" : money(o.price, p.price) }),
        el("td", { class: "n", text: money(o.amount, p.amount) }),
        el("td", { class: "n", text: money(o.filled ?? "0", p.amount) }),
        el("td", { class: "opt", text: o.status }),
        el("td", { class: "action" }, [cancel]),
      ]);
    });
    fill($("open-orders").tBodies[0], rows, state.marketReady ? "no open orders" : "Loading your orders…", 8);
  }

  // Own trades: the trades of this node's orders, newest first.
  function ownTrades() {
    const seen = new Map();
    for (const o of state.orders.concat(state.history)) {
      for (const t of o.trades || []) {
        const key = t.id + "|" + o.id;
        seen.set(key, { ...t, key: key, mySide: o.side, role: t.taker === o.id ? "taker" : "maker" });
      }
    }
    return [...seen.values()].sort((a, b) => (b.time ?? 0) - (a.time ?? 0) || (b.lamport ?? 0) - (a.lamport ?? 0));
  }

  function renderFills() {
    const p = places();
    const fills = ownTrades().slice(0, TAPE_ROWS);
    if (!changed("fills", [fills.map((t) => [t.key, tradeStatus(t)]), p, state.marketReady])) return;
    setText("fills-count", fills.length ? String(fills.length) : "");
    const rows = fills.map((t) => el("tr", { class: "trade " + tradeStatus(t), "data-id": t.key }, [
      el("td", { class: "time", text: typeof t.time === "number" ? when(t.time) : "—" }),
      el("td", { class: t.mySide, text: t.mySide }),
      el("td", { class: "n", text: money(t.price, p.price) }),
      el("td", { class: "n", text: money(t.amount, p.amount) }),
      el("td", { text: t.role }),
      el("td", {}, [statusBadge(tradeStatus(t))]),
    ]));
    fill($("my-trades").tBodies[0], rows, state.marketReady ? "no trades of yours yet" : "Loading your trades…", 6);
  }

  // -- peers

  function renderPeers() {
    if (!changed("peers", [state.peers, state.status ? state.status.node_id : null])) return;
    const now = Date.now();
    const rows = state.peers.map((p) => {
      const since = instantMs(p.connected_since);
      const link = p.tls || (p.tls === null ? "plain TCP" : "?");
      return el("tr", { "data-id": p.node_id, title: (p.user_agent || "unknown agent") + ", " + link + (p.source ? ", found by " + p.source : "") }, [
        el("td", {}, [el("code", { title: p.node_id, text: short(p.node_id) })]),
        el("td", {}, [
          el("span", { text: p.address || p.remote || "—" }),
          el("span", { class: "fam", text: p.family === "ipv6" ? "IPv6" : p.family === "ipv4" ? "IPv4" : "" }),
        ]),
        el("td", { text: p.direction || "—" }),
        el("td", { class: "n", text: p.rtt_ms === null || p.rtt_ms === undefined ? "—" : Math.round(p.rtt_ms) + " ms" }),
        el("td", { text: since ? duration(now - since) : "—", title: since ? "since " + when(since) : "" }),
        el("td", { class: "opt", text: link }),
      ]);
    });
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
      const rtt = p.rtt_ms === null || p.rtt_ms === undefined ? "?" : Math.round(p.rtt_ms) + " ms";
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

  function renderAll() {
    renderUnits();
    renderStatus();
    renderHealth();
    renderTicker();
    renderBook();
    renderTrades();
    renderOrders();
    renderFills();
    renderPeers();
  }

  // -- polling

  async function refresh() {
    if (state.poll.running) {
      // One more round once this one ends: an action's effect must show.
      state.poll.again = true;
      return;
    }
    state.poll.running = true;
    state.poll.again = false;
    try {
      // The market to show, before any of its routes is asked.
      if (state.markets === null) useMarkets(await fetchMarkets());
      const market = state.market;
      const [status, markets, book, trades, orders, history, peers, ticker] = await Promise.all([
        api("GET", "/status"),
        // A node that has no GET /markets (it said so once) carries one market.
        state.markets.length ? fetchMarkets() : [],
        api("GET", marketPath("/book?depth=" + BOOK_DEPTH)),
        api("GET", marketPath("/trades?limit=" + TRADES_LIMIT)),
        api("GET", marketPath("/orders?state=open&limit=100")),
        api("GET", marketPath("/orders?state=all&limit=100")),
        api("GET", "/peers"),
        api("GET", marketPath("/ticker")),
      ]);
      if (market !== state.market) {
        // Another market was chosen meanwhile: these answers are the last one's.
        state.poll.again = true;
      } else {
        state.status = status;
        state.statusAt = Date.now();
        state.book = { bids: book.bids || [], asks: book.asks || [] };
        state.trades = trades.trades || [];
        state.orders = orders.orders || [];
        state.history = history.orders || [];
        state.peers = Array.isArray(peers) ? peers : peers.peers || [];
        state.ticker = ticker;
        state.marketReady = true;
        useMarkets(markets);
        setBanner("");
        renderAll();
        if (!state.loaded || state.needsToken) {
          // The first answer, or the first with a token: now the stream.
          state.loaded = true;
          document.body.classList.remove("loading");
          state.needsToken = false;
          $("token-form").hidden = true;
          openStream();
        }
        if (!state.stream.live) setConnection("polling", state.stream.supported ? "polling" : "polling (no stream)");
        setText("last-update", "Updated " + new Date().toLocaleTimeString() + " · API description at /openapi.json");
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && !onFirstMarket()) {
        // The market shown is gone (the node restarted without it): read the markets again.
        state.markets = null;
      }
      if (!(e instanceof ApiError && e.status === 401)) {
        setConnection("down", "offline");
        setBanner("Cannot reach this node's API (" + (e.message || "no answer") + "). Trying again every " + POLL_MS / 1000 + " s.");
      }
    } finally {
      state.poll.running = false;
    }
    if (state.poll.again) await refresh();
  }

  function schedule() {
    clearTimeout(state.poll.timer);
    state.poll.timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, state.stream.live ? LIVE_POLL_MS : POLL_MS);
  }

  // Refresh shortly: several stream events in a row cost one round.
  function refreshSoon() {
    clearTimeout(state.poll.soon);
    state.poll.soon = setTimeout(refresh, SOON_MS);
  }

  // -- the live stream (Server-Sent Events)

  function on(source, type, handler) {
    source.addEventListener(type, (event) => {
      // A closed stream's last events (another market's) are not ours.
      if (state.stream.source !== source) return;
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

  function closeStream() {
    const s = state.stream;
    clearTimeout(s.timer);
    if (s.source) s.source.close();
    s.source = null;
    if (s.live) {
      s.live = false;
      schedule();
    }
  }

  function retryStream() {
    const s = state.stream;
    clearTimeout(s.timer);
    s.timer = setTimeout(openStream, s.retryMs);
    s.retryMs = Math.min(s.retryMs * 2, STREAM_RETRY_MAX_MS);
  }

  async function openStream() {
    const s = state.stream;
    if (!("EventSource" in window) || s.source || s.opening || !s.supported || state.needsToken) return;
    s.opening = true;
    const market = state.market;
    let url = marketPath("/stream");
    try {
      if (token()) {
        // A single-use ticket in the URL, never the token itself.
        const doc = await api("POST", "/stream/ticket");
        url += "?ticket=" + encodeURIComponent(doc.ticket);
      }
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
        // A node without tickets: its stream would want the token in the URL; poll instead.
        s.supported = false;
        if (!state.stream.live) setConnection("polling", "polling (no stream)");
      } else if (!(e instanceof ApiError && e.status === 401)) {
        retryStream();
      }
      return;
    } finally {
      s.opening = false;
    }
    if (market !== state.market) {
      // Another market was chosen while the ticket came: stream that one.
      openStream();
      return;
    }
    const source = new EventSource(url);
    s.source = source;
    source.onopen = () => {
      s.live = true;
      s.retryMs = STREAM_RETRY_MIN_MS;
      setConnection("live", "live");
      schedule();
      refreshSoon();
    };
    source.onerror = () => {
      // Never let EventSource retry on its own: its ticket is spent.
      if (s.source !== source) return;
      closeStream();
      if (state.loaded) setConnection("polling", "stream lost; polling");
      retryStream();
    };
    on(source, "book", (book) => {
      state.book = { bids: book.bids || [], asks: book.asks || [] };
      renderBook();
    });
    on(source, "trade", (trade) => {
      upsert(state.trades, trade, true);
      state.trades.length = Math.min(state.trades.length, TRADES_LIMIT);
      renderTrades();
      renderTicker();
      refreshSoon();
    });
    on(source, "order", (order) => {
      upsert(state.orders, order, order.status === "open" || order.status === "pending");
      upsert(state.history, order, true);
      renderOrders();
      renderFills();
    });
    on(source, "peer", () => refreshSoon());
    on(source, "status", (status) => {
      // The event's "peers" is one number; the page keeps GET /status's
      // counts by direction, and reads them again when the number differs.
      // Its events and state hash are its market's: GET /status's for the
      // first, the GET /markets row's for another.
      const { peers, market, events, state_hash: stateHash, ...rest } = status;
      const held = state.status && state.status.peers;
      if (typeof peers === "number" && (!held || (held.inbound ?? 0) + (held.outbound ?? 0) !== peers)) refreshSoon();
      const figures = {};
      if (events !== undefined) figures.events = events;
      if (stateHash !== undefined) figures.state_hash = stateHash;
      state.status = { ...(state.status || {}), ...rest, ...(onFirstMarket() ? figures : {}) };
      const row = marketRow(market || state.market);
      if (row && row.market === state.market) Object.assign(row, figures);
      renderStatus();
    });
  }

  // -- the order form

  const FIELDS = { price: "order-price", amount: "order-amount", type: "order-type", side: "order-side" };

  function sideValue() {
    return document.querySelector('input[name="side"]:checked').value;
  }

  function updateSubmit() {
    const side = sideValue();
    const button = $("order-submit");
    button.className = "submit " + side;
    button.textContent = (side === "buy" ? "Buy " : "Sell ") + units().base;
    updateEstimate();
  }

  function updateEstimate() {
    const price = dec($("order-price").value), amount = dec($("order-amount").value);
    const market = $("order-type").value === "market";
    setText("order-total", !market && price && amount && price.n >= 0n && amount.n >= 0n ? decText(decTrim(decMul(price, amount)), 2, true) : "—");
  }

  function clearFieldError(field) {
    const input = $(FIELDS[field]);
    input.removeAttribute("aria-invalid");
    input.closest(".field, fieldset").classList.remove("invalid");
    const message = $(FIELDS[field] + "-error");
    if (message) message.textContent = "";
  }

  function clearFormErrors() {
    for (const field of Object.keys(FIELDS)) clearFieldError(field);
    setText("order-error", "");
  }

  function showFieldError(field, text) {
    const input = $(FIELDS[field]);
    const message = $(FIELDS[field] + "-error");
    if (!input) {
      setText("order-error", text);
      return;
    }
    input.setAttribute("aria-invalid", "true");
    input.closest(".field, fieldset").classList.add("invalid");
    if (message) message.textContent = text;
    else setText("order-error", text);
    if (input.focus) input.focus();
  }

  // Where a value sits between multiples of `step`: the two nearest, as text.
  function neighbours(valueText, stepText) {
    const value = dec(valueText), step = dec(stepText);
    if (!value || !step || step.n <= 0n || value.n < 0n) return [];
    const s = Math.max(value.s, step.s);
    const v = scaled(value, s), st = scaled(step, s);
    const below = (v / st) * st;
    const out = [];
    if (below > 0n) out.push(decText({ n: below, s: s }, step.s));
    out.push(decText({ n: below + st, s: s }, step.s));
    return out.map((t) => plain(dec(t)));
  }

  // The number a message ends with ("... a multiple of the tick 0.01").
  function limitIn(message) {
    const m = /(\d+(?:\.\d+)?)\s*\.?\s*$/.exec(message || "");
    return m ? m[1] : null;
  }

  function stepSentence(what, message, value) {
    const step = limitIn(message);
    if (!step) return what + " must be a whole number of the market's steps.";
    const near = neighbours(value, step);
    return what + " go in steps of " + step + (near.length ? ": try " + near.join(" or ") : "") + ".";
  }

  const PLAIN = {
    invalid_side: ["side", () => "Choose Buy or Sell."],
    invalid_type: ["type", () => "Choose an order type from the list."],
    price_not_allowed: ["price", () => "A market order takes no price: clear the price, or choose a limit order."],
    missing_price: ["price", () => "Enter a price, such as 50000.5, or choose a market order."],
    invalid_price: ["price", () => "The price must be a number such as 50000.5 (digits and one point, no commas)."],
    price_not_positive: ["price", () => "The price must be more than zero."],
    price_not_tick_multiple: ["price", (m, v) => stepSentence("Prices", m, v)],
    price_too_high: ["price", (m) => "The price is above the highest this market accepts" + (limitIn(m) ? " (" + limitIn(m) + ")" : "") + "."],
    invalid_amount: ["amount", () => "The amount must be a number such as 0.25 (digits and one point, no commas)."],
    amount_not_positive: ["amount", () => "The amount must be more than zero."],
    amount_not_lot_multiple: ["amount", (m, v) => stepSentence("Amounts", m, v)],
    amount_too_small: ["amount", (m) => "The amount is below the smallest order this market accepts" + (limitIn(m) ? " (" + limitIn(m) + ")" : "") + "."],
    amount_too_large: ["amount", (m) => "The amount is above the largest order this market accepts" + (limitIn(m) ? " (" + limitIn(m) + ")" : "") + "."],
  };

  // Messages of nodes that answer without a code, by their opening words.
  const PLAIN_BY_TEXT = [
    [/^price is required/, "missing_price"],
    [/^price must be absent/, "price_not_allowed"],
    [/^price must be a/, "invalid_price"],
    [/^amount is required|^amount must be a/, "invalid_amount"],
    [/^side must/, "invalid_side"],
    [/^type must/, "invalid_type"],
  ];

  function sentence(text) {
    const t = String(text || "").trim().replace(/^[a-z]+(?:_[a-z0-9]+)+:\s*/, "");
    if (!t) return "The node refused the order.";
    return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
  }

  // An error of POST /orders as {field, text}: plain words, never a code.
  function plainError(e, body) {
    if (!(e instanceof ApiError)) return { field: null, text: "Could not reach the node. Check that it is running, then try again." };
    if (e.status === 503) return { field: null, text: "The node cannot take orders right now (it may be starting, stopping or short of disk). Try again in a moment." };
    if (e.status === 401) return { field: null, text: "This node's API needs a token: enter it above, then place the order again." };
    if (e.status === 413) return { field: null, text: "The order is too large to send." };
    let code = e.code;
    if (!code) for (const [re, c] of PLAIN_BY_TEXT) if (re.test(e.message)) code = c;
    const known = PLAIN[code];
    const field = e.field || (known ? known[0] : (/^(price|amount|side|type)\b/.exec(e.message) || [])[1] || null);
    const value = field === "price" ? body.price : field === "amount" ? body.amount : null;
    const text = known ? known[1](e.message, value) : sentence(e.message);
    return { field: FIELDS[field] ? field : null, text: text };
  }

  const RESULT = {
    open: "open, on the book",
    filled: "filled",
    cancelled: "cancelled (what did not fill at once)",
    rejected: "refused",
    pending: "pending, after an earlier order of this node",
  };

  async function placeOrder(event) {
    event.preventDefault();
    const form = $("order-form");
    clearFormErrors();
    setText("order-result", "");
    const type = form.elements.type.value;
    const body = { side: sideValue(), type: type, amount: $("order-amount").value.trim() };
    if (type !== "market") body.price = $("order-price").value.trim();
    if (type !== "market" && !body.price) return showFieldError("price", "Enter a price, such as 50000.5, or choose a market order.");
    if (!body.amount) return showFieldError("amount", "Enter an amount, such as 0.25.");
    const button = $("order-submit");
    button.disabled = true;
    // The market the form showed when sent, whatever is chosen meanwhile.
    const market = state.market;
    const u = units();
    try {
      const doc = await api("POST", marketPath("/orders"), body);
      const filled = dec(doc.filled);
      setText("order-result", (doc.side === "buy" ? "Buy " : "Sell ") + doc.amount + " " + u.base +
        (doc.price ? " at " + doc.price : " at market") + ": " + (RESULT[doc.status] || doc.status) +
        (filled && filled.n > 0n && doc.status !== "filled" ? ", " + doc.filled + " filled" : "") +
        (doc.reason ? " (" + sentence(doc.reason).replace(/\.$/, "") + ")" : "") + ".");
      if (market === state.market) {
        if (doc.status === "open") upsert(state.orders, doc, true);
        upsert(state.history, doc, true);
        renderOrders();
        renderFills();
      }
    } catch (e) {
      const plainText = plainError(e, body);
      if (plainText.field) showFieldError(plainText.field, plainText.text);
      else setText("order-error", plainText.text);
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  async function cancelOrder(button) {
    const id = button.dataset.id;
    button.disabled = true;
    setText("orders-error", "");
    try {
      const doc = await api("DELETE", marketPath("/orders/" + encodeURIComponent(id)));
      if (doc.status !== "open") upsert(state.orders, { id: id }, false);
      renderOrders();
    } catch (e) {
      setText("orders-error", "The order could not be cancelled: " + sentence(e.message).toLowerCase());
      button.disabled = false;
    }
    refresh();
  }

  // A ladder level clicked: its price into the form, on the side that would take it.
  function useLevel(button) {
    const side = button.dataset.side === "ask" ? "buy" : "sell";
    $("side-" + side).checked = true;
    const price = $("order-price");
    if ($("order-type").value === "market") {
      $("order-type").value = "limit";
      price.disabled = false;
    }
    price.value = button.dataset.price;
    clearFieldError("price");
    updateSubmit();
    price.classList.remove("flash");
    void price.offsetWidth;
    price.classList.add("flash");
    $("order-amount").focus();
  }

  async function copyValue(button) {
    const value = $(button.dataset.copy).dataset.full || "";
    let done = false;
    try {
      if (navigator.clipboard && value) {
        await navigator.clipboard.writeText(value);
        done = true;
      }
    } catch (e) {
      done = false;
    }
    if (!done && value) {
      const area = el("textarea", { class: "visually-hidden", readonly: "" });
      area.value = value;
      document.body.append(area);
      area.select();
      try {
        done = document.execCommand("copy");
      } catch (e) {
        done = false;
      }
      area.remove();
    }
    button.textContent = done ? "copied" : "copy failed";
    setTimeout(() => { button.textContent = "copy"; }, 1500);
  }

  function start() {
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { drawn.delete("book"); renderBook(); }, 150);
    });
    $("market").addEventListener("change", (event) => chooseMarket(event.target.value));
    window.addEventListener("hashchange", followHash);
    // The skip link moves the focus without taking the hash, which names the market.
    document.querySelector("a.skip").addEventListener("click", (event) => {
      event.preventDefault();
      $("trade").scrollIntoView();
      document.querySelector('input[name="side"]:checked').focus();
    });
    const form = $("order-form");
    form.addEventListener("submit", placeOrder);
    form.addEventListener("change", (event) => {
      if (event.target.name === "side") updateSubmit();
    });
    for (const field of ["price", "amount"]) {
      $(FIELDS[field]).addEventListener("input", () => {
        clearFieldError(field);
        updateEstimate();
      });
    }
    $("order-type").addEventListener("change", (event) => {
      $("order-price").disabled = event.target.value === "market";
      clearFieldError("price");
      clearFieldError("type");
      updateEstimate();
    });
    $("open-orders").addEventListener("click", (event) => {
      const button = event.target.closest("button.cancel");
      if (button) cancelOrder(button);
    });
    $("book-panel").addEventListener("click", (event) => {
      const row = event.target.closest(".level");
      if (row) useLevel(row.querySelector("button.price"));
    });
    const chart = $("depth-chart");
    chart.addEventListener("pointermove", showReadout);
    chart.addEventListener("pointerleave", hideReadout);
    document.addEventListener("click", (event) => {
      const button = event.target.closest("button.copy");
      if (button) copyValue(button);
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setToken($("token").value.trim());
      $("token").value = "";
      closeStream();
      state.stream.supported = true;
      refresh().then(() => { if (!state.needsToken) openStream(); });
    });
    $("token-forget").addEventListener("click", () => {
      setToken("");
      closeStream();
      state.stream.supported = true;
      refresh().then(() => { if (!state.needsToken) openStream(); });
    });
    updateSubmit();
    renderDepth();
    refresh().then(schedule);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
