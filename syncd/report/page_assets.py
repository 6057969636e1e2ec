"""The status page's stylesheet and script, inlined into every page (no outside assets:
it works offline and as a single attached file). The page's Content-Security-Policy
allows exactly these two by their hashes and nothing else."""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root { color-scheme: light dark; --bg: #fbfbfa; --fg: #1d1f21; --muted: #5f6670; --line: #d9dcdf;
  --card: #ffffff; --ok: #1a7f37; --bad: #c62828; --warn: #a15c00; --none: #e3e5e8; --accent: #2457a6; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #15171a; --fg: #e6e6e6; --muted: #9aa3ad; --line: #30353b; --card: #1d2024;
    --ok: #3fb950; --bad: #ff6b6b; --warn: #e3a33b; --none: #2c3036; --accent: #7aa7ff; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main, .offline { max-width: 1100px; margin: 0 auto; padding: 12px 16px 32px; }
h1 { font-size: 1.35rem; margin: 8px 0 4px; }
h2 { font-size: 1.1rem; margin: 28px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 1.05rem; margin: 0; overflow-wrap: anywhere; }
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, monospace; overflow-wrap: anywhere; }
.muted, .measured { color: var(--muted); font-size: 0.9rem; }
.verdict { font-size: 1.15rem; font-weight: 650; padding: 10px 14px; border-radius: 8px; margin: 10px 0;
  border: 2px solid var(--bad); color: var(--bad); }
.verdict.ready { border-color: var(--ok); color: var(--ok); }
.verdict.unknown { border-color: var(--warn); color: var(--warn); }
.health { margin: 6px 0; }
.sev-ok { color: var(--ok); } .sev-warning, .sev-unknown { color: var(--warn); } .sev-critical { color: var(--bad); }
.offline { color: var(--bad); font-weight: 600; }
.notice { color: var(--warn); }
ol.checklist { list-style: none; padding: 0; margin: 0; }
.checklist > li { background: var(--card); border: 1px solid var(--line); border-left: 5px solid var(--bad);
  border-radius: 6px; padding: 8px 12px; margin: 6px 0; }
.checklist > li.ok { border-left-color: var(--ok); }
.mark { font-weight: 700; margin-right: 6px; } .ok .mark { color: var(--ok); } .not-ok .mark { color: var(--bad); }
.checklist ul, .problems { margin: 4px 0 0; padding-left: 20px; }
details summary { cursor: pointer; color: var(--muted); }
.sources { display: grid; gap: 14px; }
.source { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.source > header { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 8px; }
.badge { font-size: 0.8rem; border: 1px solid var(--line); border-radius: 99px; padding: 1px 9px; white-space: nowrap; }
.badge.direction { color: var(--accent); border-color: var(--accent); }
.badge.good { color: var(--ok); border-color: var(--ok); } .badge.bad { color: var(--bad); border-color: var(--bad); }
.badge.warn { color: var(--warn); border-color: var(--warn); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 6px 14px; margin: 0 0 8px; }
.figures dt { color: var(--muted); font-size: 0.8rem; } .figures dd { margin: 0; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 10px; margin: 8px 0; }
figure { margin: 0; } figcaption { font-size: 0.8rem; color: var(--muted); }
svg.chart { width: 100%; height: auto; display: block; }
svg .axis { stroke: var(--muted); stroke-width: 1; } svg .grid { stroke: var(--line); stroke-dasharray: 3 3; }
svg .line { fill: none; stroke: var(--accent); stroke-width: 1.6; } svg circle.line { fill: var(--accent); }
svg .tick, svg .empty { fill: var(--muted); font-size: 10px; }
svg.strip { width: 100%; min-width: 150px; max-width: 260px; height: 14px; display: block; }
svg.strip .clean { fill: var(--ok); } svg.strip .error { fill: var(--bad); } svg.strip .none { fill: var(--none); }
.scroll { overflow-x: auto; }
.sources > *, .charts > *, .figures > * { min-width: 0; }  /* a wide table scrolls in its box, not the page */
.where { margin: 0 0 6px; font-size: 0.85rem; }
table.glance td:first-child { white-space: nowrap; } table.glance a { color: inherit; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 0.8rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.halted td, .mismatch { color: var(--bad); }
.halted-list { border: 1px solid var(--bad); border-radius: 6px; padding: 6px 10px; margin: 6px 0; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; vertical-align: -1px; }
.legend .clean { background: var(--ok); } .legend .error { background: var(--bad); } .legend .none { background: var(--none); }
footer { margin-top: 28px; }
@media (max-width: 600px) { body { font-size: 14px; } main { padding: 8px 10px 24px; } th, td { padding: 4px 5px; } }
"""

JS = """
(function () {
  "use strict";
  var root = document.documentElement;
  var every = Number(root.getAttribute("data-refresh")) || 0;
  function ago(seconds) {
    if (seconds < 90) { return Math.round(seconds) + " s ago"; }
    if (seconds < 5400) { return Math.round(seconds / 60) + " min ago"; }
    if (seconds < 172800) { return (seconds / 3600).toFixed(1) + " h ago"; }
    return (seconds / 86400).toFixed(1) + " days ago";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-since]").forEach(function (node) {
      var t = Date.parse(node.getAttribute("datetime"));
      if (!isNaN(t)) { node.textContent = ago(Math.max(0, (now - t) / 1000)); }
    });
  }
  function notice(text) {
    var node = document.getElementById("offline");
    node.textContent = text;
    node.hidden = !text;
  }
  function refresh() {
    if (document.hidden) { setTimeout(refresh, every * 1000); return; }
    fetch(window.location.pathname, { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("main");
        if (!fresh) { throw new Error("the answer was not the status page"); }
        var open = [];
        document.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
        document.querySelector("main").replaceWith(fresh);
        open.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
        document.title = doc.title;
        root.setAttribute("data-refreshes", String(Number(root.getAttribute("data-refreshes") || 0) + 1));
        notice("");
        tick();
      })
      .catch(function (error) {
        notice("The daemon did not answer (" + error.message + "); this is the last page it sent.");
      })
      .then(function () { setTimeout(refresh, every * 1000); });
  }
  tick();
  setInterval(tick, 1000);
  if (every > 0) { setTimeout(refresh, every * 1000); }
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Nothing loads from anywhere; only these two inline blocks run or apply; fetch() may
# only ask the daemon that served the page.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src {_hash(CSS)}; script-src {_hash(JS)}; "
                           "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'")
