const data = JSON.parse(document.getElementById('run-data').textContent);
const spans = data.spans;
const logs = data.logs;
const byParent = {};
const ids = new Set(spans.map(s => s.span_id));
for (const s of spans) {
  const p = ids.has(s.parent_span_id) ? s.parent_span_id : '';
  (byParent[p] = byParent[p] || []).push(s);
}
const ordered = [];
(function walk(parent, depth) {
  for (const s of (byParent[parent] || []).sort((a, b) => a.start_ns - b.start_ns)) {
    ordered.push([s, depth]); walk(s.span_id, depth + 1);
  }
})('', 0);
const t0 = spans.length ? Math.min(...spans.map(s => s.start_ns)) : 0;
const t1 = spans.length ? Math.max(...spans.map(s => s.end_ns)) : 1;
const total = Math.max(t1 - t0, 1);
const fmt = ms => ms < 1000 ? ms.toFixed(1) + ' ms' : (ms / 1000).toFixed(2) + ' s';
const esc = t => String(t).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const chart = document.getElementById('chart');
let axis = '<div class="axis"><div class="label">span</div><div class="track">';
for (let i = 0; i <= 4; i++) {
  const shift = i === 0 ? '0' : i === 4 ? '-100%' : '-50%';
  axis += `<span style="left:${i * 25}%;transform:translateX(${shift})">${fmt(total * i / 4 / 1e6)}</span>`;
}
chart.innerHTML = axis + '</div></div>';
for (const [s, depth] of ordered) {
  const left = (s.start_ns - t0) / total * 100;
  const width = Math.max((s.end_ns - s.start_ns) / total * 100, 0.2);
  const row = document.createElement('div');
  row.className = 'row';
  row.dataset.spanId = s.span_id;
  row.innerHTML = `<div class="label" style="padding-left:${depth * 14}px"><span class="kind">${esc(s.kind)}</span>${esc(s.name)}</div>` +
    `<div class="track"><div class="bar ${s.status === 'error' ? 'error' : 'ok'}" data-span-id="${s.span_id}" ` +
    `style="left:${left}%;width:${width}%" title="${esc(s.kind + '.' + s.name)} ${fmt(s.duration_ms)} ${esc(s.status)}"></div>` +
    (left + width <= 85
      ? `<span class="dur" style="left:calc(${left + width}% + 4px)">${fmt(s.duration_ms)}</span></div>`
      : width > 12
        ? `<span class="dur inside" style="right:calc(${100 - left - width}% + 4px)">${fmt(s.duration_ms)}</span></div>`
        : `<span class="dur" style="right:calc(${100 - left}% + 4px)">${fmt(s.duration_ms)}</span></div>`);
  row.addEventListener('click', () => show(s, row));
  chart.appendChild(row);
}
function logLines(list) {
  return list.map(l => `<div class="log lvl-${esc(l.level)}">${esc(l.datetime.slice(11, 23))} [${esc(l.level.toUpperCase())}] ${esc(l.message)}` +
    (l.exception_type ? `\n  ! ${esc(l.exception_type)}: ${esc(l.exception_message || '')}` : '') + '</div>').join('');
}
function show(s, row) {
  document.querySelectorAll('.row.selected').forEach(r => r.classList.remove('selected'));
  row.classList.add('selected');
  const own = logs.filter(l => l.span_id === s.span_id);
  const attrs = Object.entries(s.attributes || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(JSON.stringify(v))}</td></tr>`).join('');
  const errs = (s.events || []).filter(e => e.name === 'exception').map(e =>
    `<div class="log lvl-error">${esc(e.attributes['exception.stacktrace'] || e.attributes['exception.message'] || '')}</div>`).join('');
  document.getElementById('details').innerHTML =
    `<h3>${esc(s.kind)}.${esc(s.name)} <span class="status-${s.status === 'error' ? 'error' : 'ok'}">${esc(s.status)}</span></h3>` +
    `<table><tr><td>duration</td><td>${fmt(s.duration_ms)}</td></tr>` +
    `<tr><td>CPU</td><td>${s.cpu_time_ms == null ? '-' : fmt(s.cpu_time_ms)} (${s.cpu_percent == null ? '-' : s.cpu_percent + '%'})</td></tr>` +
    `<tr><td>memory</td><td>${s.memory_start_mb == null ? '-' : s.memory_start_mb.toFixed(1)} → ${s.memory_end_mb == null ? '-' : s.memory_end_mb.toFixed(1)} MB</td></tr>` +
    `<tr><td>span id</td><td>${esc(s.span_id)}</td></tr>${attrs}</table>` +
    (s.status_message ? `<p class="status-error">${esc(s.status_message)}</p>` : '') + errs +
    `<h4>Logs (${own.length})</h4>` + (logLines(own) || '<p>No logs in this span.</p>');
}
const loose = logs.filter(l => !ids.has(l.span_id));
document.getElementById('details').innerHTML = '<h3>Click a span to see its logs</h3>' +
  (loose.length ? `<h4>Logs outside spans (${loose.length})</h4>` + logLines(loose) : '');
const m = data.metrics;
if (m) {
  document.getElementById('metrics').innerHTML = '<h3>Metrics</h3><table><tr><th>span</th><th>count</th><th>errors</th><th>min</th><th>p50</th><th>p95</th><th>max</th><th>mean</th></tr>' +
    m.by_name.map(r => `<tr><td>${esc(r.kind)}.${esc(r.name)}</td><td>${r.count}</td><td>${r.errors}</td><td>${fmt(r.min_ms)}</td><td>${fmt(r.p50_ms)}</td><td>${fmt(r.p95_ms)}</td><td>${fmt(r.max_ms)}</td><td>${fmt(r.mean_ms)}</td></tr>`).join('') + '</table>';
}
document.body.dataset.rendered = String(ordered.length);
