/**
 * The console's page and style sheet. The scripts are compiled from console/src into
 * dist/console by `npm run build`. No inline script or style anywhere (the CSP forbids them).
 */

export const INDEX_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Trellis console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/console.css">
<script type="module" src="/console/app.js"></script>
</head>
<body>
<div id="app"><p class="muted pad">Loading the Trellis console…</p></div>
</body>
</html>
`;

export const CONSOLE_CSS = `
:root { --bg: #f6f7f9; --panel: #fff; --ink: #1d2330; --muted: #6b7385; --line: #dfe3ea; --accent: #2f6f4f; --bad: #b3261e; --warn: #a86b00; --ok: #2f7d32; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
header.top { display: flex; align-items: center; gap: 18px; padding: 8px 18px; background: #1f2a24; color: #e8efe9; }
header.top .brand { font-weight: 700; letter-spacing: .5px; }
header.top nav a { color: #cfe0d4; text-decoration: none; margin-right: 12px; }
header.top nav a.active { color: #fff; border-bottom: 2px solid #8fd1a8; }
header.top .who { margin-left: auto; display: flex; gap: 10px; align-items: center; }
header.top select, header.top button { font: inherit; }
main { padding: 18px; max-width: 1400px; }
h1 { font-size: 20px; margin: 0 0 12px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
.pad { padding: 18px; }
.muted { color: var(--muted); }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 14px; margin-bottom: 14px; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; min-width: 150px; }
.card .n { font-size: 26px; font-weight: 700; }
table { border-collapse: collapse; width: 100%; background: var(--panel); }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 12px; background: #e8ebf0; }
.badge.online, .badge.succeeded { background: #dff1e1; color: var(--ok); }
.badge.offline, .badge.running, .badge.requested, .badge.scheduled { background: #fff3d6; color: var(--warn); }
.badge.revoked, .badge.failed, .badge.error, .badge.timeout, .badge.canceled, .badge.abandoned { background: #fbe0de; color: var(--bad); }
.label { display: inline-block; margin: 0 4px 2px 0; padding: 0 6px; border: 1px solid var(--line); border-radius: 4px; font-size: 12px; }
form.filters, .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin-bottom: 12px; }
input, select, textarea, button { font: inherit; padding: 5px 8px; border: 1px solid #c8ced8; border-radius: 4px; background: #fff; }
textarea { width: 100%; min-height: 80px; }
button { cursor: pointer; background: #eef1f4; }
button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
button.danger { background: var(--bad); color: #fff; border-color: var(--bad); }
button:disabled { opacity: .5; cursor: default; }
pre.output { background: #111713; color: #d9e7dc; padding: 12px; border-radius: 6px; min-height: 120px; max-height: 520px; overflow: auto; white-space: pre-wrap; word-break: break-all; }
.error { color: var(--bad); margin: 8px 0; }
.notice { color: var(--ok); margin: 8px 0; }
.login { max-width: 360px; margin: 80px auto; }
.login label, form.fields label { display: block; margin: 10px 0 4px; font-weight: 600; }
.login input, form.fields input, form.fields select { width: 100%; }
.modal-back { position: fixed; inset: 0; background: rgba(0,0,0,.35); display: flex; align-items: center; justify-content: center; }
.modal { background: #fff; border-radius: 8px; padding: 18px; min-width: 340px; max-width: 520px; }
.modal .row { justify-content: flex-end; margin: 14px 0 0; }
a { color: var(--accent); }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; }
.pager { display: flex; gap: 8px; margin-top: 10px; align-items: center; }
`;
