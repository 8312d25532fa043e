const data = JSON.parse(document.getElementById('run-data').textContent);
const view = data.view || {};
const spans = data.spans;
const logs = data.logs;
const PAGE = view.page_size || 100;
// Python's f"{x:.{places}f}": toFixed rounds an exact tie (45.25) up, Python to even.
function fixed(x, places) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (Object.is(x, -0)) return '-' + (0).toFixed(places);
  const text = x.toFixed(places);
  const exact = x.toFixed(places + 25);  // far past any digit a double's value can hold
  const kept = exact.slice(0, exact.length - 25);
  if (/^50*$/.test(exact.slice(exact.length - 25)) && Number(kept[kept.length - 1]) % 2 === 0) {
    return kept;  // a tie: down to the even digit
  }
  return text;
}
// The same text as flowtrail.formats.tree.duration_text (tests compare the two).
function durationText(ms) {
  if (typeof ms !== 'number') return '-';
  return ms < 1000 ? fixed(ms, 1) + 'ms' : fixed(ms / 1000, 2) + 's';
}
const fmt = durationText;
const esc = t => String(t).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const statusClass = s => 'status-' + String(s || 'unset').toLowerCase().replace(/[^a-z0-9-]/g, '');
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
const chart = document.getElementById('chart');
const details = document.getElementById('details');

function logLine(l, index) {
  let text = `${esc((l.datetime || '').slice(11, 23))} [${esc((l.level || '').toUpperCase())}] ${esc(l.message || '')}`;
  if (l.exception_type) text += `\n  ! ${esc(l.exception_type)}: ${esc(l.exception_message || '')}`;
  const stack = l.stack_trace ? `<pre class="stack">${esc(l.stack_trace.replace(/\s+$/, ''))}</pre>` : '';
  return `<div class="log lvl-${esc(l.level)}" data-index="${index}">${text}${stack}</div>`;
}
// Records a page at a time: `list` into `box`, then a "more" button for the next page.
function pagedLogs(box, list, shown) {
  box.querySelectorAll('.more').forEach(b => b.remove());
  const upto = Math.min(list.length, shown + PAGE);
  box.insertAdjacentHTML('beforeend', list.slice(shown, upto).map(([l, i]) => logLine(l, i)).join(''));
  if (upto < list.length) {
    const more = document.createElement('button');
    more.className = 'more';
    more.textContent = `more (${list.length - upto} more)`;
    more.addEventListener('click', () => pagedLogs(box, list, upto));
    box.appendChild(more);
  }
  return upto;
}
function restNote(shown, total) {
  if (total <= shown) return '';
  return `<p class="cap">${shown} of ${total} records are in this report. Every record: <code>${esc(view.rest_command || 'flowtrail show RUN_ID --format text')}</code></p>`;
}
function showLogs(box, list, total, upto) {
  box.innerHTML = restNote(list.length, total);
  const logBox = document.createElement('div');
  box.appendChild(logBox);
  let shown = pagedLogs(logBox, list, 0);
  while (shown < Math.min(upto || 0, list.length)) shown = pagedLogs(logBox, list, shown);
  return logBox;
}
const indexed = logs.map((l, i) => [l, i]);
const counts = view.records_by_span || {};
let selectedRow = null;

function showSpan(s, row) {
  if (selectedRow) selectedRow.classList.remove('selected');
  selectedRow = row;
  row.classList.add('selected');
  document.body.dataset.selected = s.span_id;
  const own = indexed.filter(([l]) => l.span_id === s.span_id);
  const attrs = Object.entries(s.attributes || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(JSON.stringify(v))}</td></tr>`).join('');
  const errs = (s.events || []).filter(e => e.name === 'exception').map(e => {
    const a = e.attributes || {};
    return `<pre class="stack lvl-error">${esc(a['exception.stacktrace'] || ((a['exception.type'] || '') + ': ' + (a['exception.message'] || '')))}</pre>`;
  }).join('');
  details.innerHTML =
    `<h3>${esc(s.kind)}.${esc(s.name)} <span class="status ${statusClass(s.status)}">${esc(s.status)}</span></h3>` +
    `<table><tr><td>duration</td><td>${fmt(s.duration_ms)}</td></tr>` +
    `<tr><td>CPU</td><td>${s.cpu_time_ms == null ? '-' : fmt(s.cpu_time_ms)} (${s.cpu_percent == null ? '-' : s.cpu_percent + '%'})</td></tr>` +
    `<tr><td>memory</td><td>${s.memory_start_mb == null ? '-' : s.memory_start_mb.toFixed(1)} → ${s.memory_end_mb == null ? '-' : s.memory_end_mb.toFixed(1)} MB</td></tr>` +
    `<tr><td>span id</td><td>${esc(s.span_id)}</td></tr>${attrs}</table>` +
    (s.status_message ? `<p class="status-error">${esc(s.status_message)}</p>` : '') + errs +
    `<h4>Logs (${counts[s.span_id] || own.length})</h4><div id="span-logs"></div>`;
  const box = document.getElementById('span-logs');
  if (own.length) showLogs(box, own, counts[s.span_id] || own.length);
  else box.innerHTML = '<p>No logs in this span.</p>';
}

const loose = indexed.filter(([l]) => !ids.has(l.span_id));
const looseTotal = counts[''] || loose.length;
function showLoose(row) {
  if (selectedRow) selectedRow.classList.remove('selected');
  selectedRow = row;
  if (row) row.classList.add('selected');
  details.innerHTML = `<h4>Logs outside spans (${looseTotal})</h4><div id="loose-logs"></div>`;
  showLogs(document.getElementById('loose-logs'), loose, looseTotal);
}

if (spans.length) {
  const t0 = Math.min(...spans.map(s => s.start_ns));
  const t1 = Math.max(...spans.map(s => s.end_ns));
  const total = Math.max(t1 - t0, 1);
  let axis = '<div class="axis"><div class="label">span</div><div class="track">';
  for (let i = 0; i <= 4; i++) {
    const shift = i === 0 ? '0' : i === 4 ? '-100%' : '-50%';
    axis += `<span style="left:${i * 25}%;transform:translateX(${shift})">${fmt(total * i / 4 / 1e6)}</span>`;
  }
  chart.innerHTML = axis + '</div></div>';
  const rows = {};
  for (const [s, depth] of ordered) {
    const left = (s.start_ns - t0) / total * 100;
    const width = Math.max((s.end_ns - s.start_ns) / total * 100, 0.2);
    const row = document.createElement('div');
    row.className = 'row';
    row.dataset.spanId = s.span_id;
    const dur = fmt(s.duration_ms);
    row.innerHTML = `<div class="label" style="padding-left:${depth * 14}px"><span class="kind">${esc(s.kind)}</span>${esc(s.name)}</div>` +
      `<div class="track"><div class="bar ${s.status === 'error' ? 'error' : 'ok'}" data-span-id="${esc(s.span_id)}" ` +
      `style="left:${left}%;width:${width}%" title="${esc(s.kind + '.' + s.name)} ${dur} ${esc(s.status)}"></div>` +
      (left + width <= 85
        ? `<span class="dur" style="left:calc(${left + width}% + 4px)">${dur}</span></div>`
        : width > 12
          ? `<span class="dur inside" style="right:calc(${100 - left - width}% + 4px)">${dur}</span></div>`
          : `<span class="dur" style="right:calc(${100 - left}% + 4px)">${dur}</span></div>`);
    row.addEventListener('click', () => showSpan(s, row));
    chart.appendChild(row);
    rows[s.span_id] = [s, row];
  }
  if (loose.length) {
    const row = document.createElement('div');
    row.className = 'row loose';
    row.innerHTML = `<div class="label"><i>outside spans</i></div><div class="track"><span class="dur">${looseTotal} records</span></div>`;
    row.addEventListener('click', () => showLoose(row));
    chart.appendChild(row);
  }
  const first = rows[view.first_failure];
  if (first) {
    showSpan(first[0], first[1]);
    first[1].scrollIntoView({block: 'nearest'});
  } else if (loose.length) {
    showLoose(null);
    details.insertAdjacentHTML('afterbegin', '<h3>Click a span to see its logs</h3>');
  } else {
    details.innerHTML = '<h3>Click a span to see its logs</h3>';
  }
} else {
  // No spans: the records as a list, opened on the first error record.
  chart.innerHTML = `<h3>Records (${view.record_total == null ? logs.length : view.record_total})</h3><div id="record-list"></div>`;
  const box = document.getElementById('record-list');
  const target = view.first_error_record;
  const upto = target == null ? 0 : target + 1;
  if (logs.length) {
    const listBox = showLogs(box, indexed, view.record_total == null ? logs.length : view.record_total, upto);
    const hit = target == null ? null : listBox.querySelector(`.log[data-index="${target}"]`);
    if (hit) {
      hit.classList.add('selected');
      document.body.dataset.selected = 'record:' + target;
      details.innerHTML = '<h3>First error</h3>' + logLine(logs[target], target);
      hit.scrollIntoView({block: 'nearest'});
    } else {
      details.innerHTML = '<h3>No errors in this run</h3>';
    }
  } else {
    box.innerHTML = '<p>No records.</p>';
  }
}
const m = data.metrics;
if (m) {
  const rowsShown = m.by_name.slice(0, 200);
  const names = Math.max(view.name_total || 0, m.by_name.length);
  document.getElementById('metrics').innerHTML = '<h3>Metrics</h3><table><tr><th>span</th><th>count</th><th>errors</th><th>min</th><th>p50</th><th>p95</th><th>max</th><th>mean</th></tr>' +
    rowsShown.map(r => `<tr><td>${esc(r.kind)}.${esc(r.name)}</td><td>${r.count}</td><td>${r.errors}</td><td>${fmt(r.min_ms)}</td><td>${fmt(r.p50_ms)}</td><td>${fmt(r.p95_ms)}</td><td>${fmt(r.max_ms)}</td><td>${fmt(r.mean_ms)}</td></tr>`).join('') + '</table>' +
    (names > rowsShown.length ? `<p class="cap">${rowsShown.length} of ${names} span names (those that took longest in all).</p>` : '');
}
document.body.dataset.rendered = String(ordered.length);
