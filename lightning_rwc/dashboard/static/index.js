// The RWC dashboard: how every layer learns, at a glance. Plain ES module, no library: TensorBoard loads it in the
// RWC tab and calls render(). Data come from this plugin's routes (see plugin.py), relative to the page.

const POLL_MS = 5000;
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];
const MISSING = [214, 214, 214];
const CLUSTER_COLORS = ['#0072b2', '#e69f00', '#009e73', '#cc79a7', '#56b4e9', '#d55e00', '#f0e442', '#000000'];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'style') node.style.cssText = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

function plain(value) {  // a scale's end in plain numbers, two digits: 0.25, 12, 4.1e-4
  if (value >= 0.01 && value < 1000) return String(Number(value.toPrecision(2)));
  const [mantissa, exponent] = value.toExponential(1).split('e');
  return `${Number(mantissa)}e${Number(exponent)}`;
}

function fmt(value) {
  if (!Number.isFinite(value)) return 'missing';
  if (value === 0) return '0 (no change)';
  return value.toPrecision(3);
}

async function fetchRun(run, columns) {
  const response = await fetch(`run?run=${encodeURIComponent(run)}&columns=${columns}`);
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  const buffer = await response.arrayBuffer();
  const length = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const values = new Float32Array(buffer, 4 + length, header.shape[0] * header.shape[1]);
  return {header, values, bytes: buffer.byteLength};
}

function spearman(xs, ys) {
  const rank = (v) => {
    const order = v.map((x, i) => [x, i]).sort((a, b) => a[0] - b[0]);
    const r = new Array(v.length);
    for (let i = 0; i < order.length;) {
      let j = i;
      while (j + 1 < order.length && order[j + 1][0] === order[i][0]) j++;
      for (let k = i; k <= j; k++) r[order[k][1]] = (i + j) / 2;
      i = j + 1;
    }
    return r;
  };
  const rx = rank(xs), ry = rank(ys), n = xs.length;
  const mx = rx.reduce((a, b) => a + b, 0) / n, my = ry.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (rx[i] - mx) * (ry[i] - my); sxx += (rx[i] - mx) ** 2; syy += (ry[i] - my) ** 2;
  }
  return sxx && syy ? sxy / Math.sqrt(sxx * syy) : NaN;
}

function logAxes(ctx, box, yMin, yMax, xLabel) {
  ctx.strokeStyle = '#888'; ctx.fillStyle = '#444'; ctx.font = '11px sans-serif';
  ctx.strokeRect(box.x, box.y, box.w, box.h);
  for (let p = Math.ceil(yMin); p <= Math.floor(yMax); p++) {
    const y = box.y + box.h - ((p - yMin) / (yMax - yMin || 1)) * box.h;
    ctx.fillText(`1e${p}`, 2, y + 4);
    ctx.beginPath(); ctx.moveTo(box.x - 3, y); ctx.lineTo(box.x, y); ctx.stroke();
  }
  ctx.fillText(xLabel, box.x + box.w / 2 - 20, box.y + box.h + 24);
}

const RUN_COLORS = ['#0072b2', '#e69f00'];  // run A (solid), run B (dashed) in the curves of a comparison
const DIVERGING = [[33, 102, 172], [247, 247, 247], [178, 24, 43]];  // B below A, equal, B above A

function diverging(t) {  // t from -1 (blue) through 0 (white) to 1 (red)
  const f = Math.min(Math.abs(t), 1), end = t < 0 ? DIVERGING[0] : DIVERGING[2];
  return DIVERGING[1].map((c, k) => Math.round(c + f * (end[k] - c)));
}

function packed([r, g, b]) {  // one opaque pixel of an ImageData read as Uint32 (little-endian, as in every browser)
  return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

const VIRIDIS_PIXELS = Array.from({length: 256}, (_, k) => packed(viridis(k / 255)));
const DIVERGING_PIXELS = Array.from({length: 257}, (_, k) => packed(diverging(k / 128 - 1)));
const MISSING_PIXEL = packed(MISSING), ZERO_PIXEL = packed([0, 0, 0]);

function rowHeight(rows) {
  return rows > 2000 ? 1 : rows > 300 ? 2 : Math.max(3, Math.floor(480 / rows));
}

function logRatio(a, b) {  // log10(b / a); 0 where equal (both 0 included), infinite where one is 0; NaN if missing
  return a >= 0 && b >= 0 ? (a === b ? 0 : Math.log10(b / a)) : NaN;
}

class StepAxis {  // steps from..to over width pixels: one for every heatmap shown together
  constructor(from, to, width) {
    this.from = from; this.to = to > from ? to : from + 1; this.width = Math.round(width);
  }

  x(step) { return ((step - this.from) / (this.to - this.from)) * this.width; }

  stepAt(x) { return this.from + ((x + 0.5) / this.width) * (this.to - this.from); }  // at the centre of pixel x

  ticks(count) {  // about count round steps: 1, 2 or 5 times a power of ten apart
    const wanted = (this.to - this.from) / Math.max(count - 1, 1), power = 10 ** Math.floor(Math.log10(wanted));
    const spacing = Math.max(1, [1, 2, 5, 10].map((m) => m * power).find((s) => s >= wanted)), ticks = [];
    for (let step = Math.ceil(this.from / spacing) * spacing; step <= this.to; step += spacing) ticks.push(step);
    return ticks;
  }
}

function blit(canvas, pixels, width, rows, rowH) {  // one pixel per row and step position, drawn rowH pixels high
  canvas.width = width; canvas.height = rows * rowH;
  const ctx = canvas.getContext('2d');
  if (!rows) return ctx;
  const image = new ImageData(new Uint8ClampedArray(pixels.buffer), width, rows);
  const scratch = el('canvas', {width, height: rows});
  scratch.getContext('2d').putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(scratch, 0, 0, width, rows * rowH);
  return ctx;
}

function drawRowLabels(canvas, rows, rowH, clusters, byCluster) {  // block names and cluster strips; the block spans
  canvas.height = rows.length * rowH;
  const ctx = canvas.getContext('2d'), spans = [];
  ctx.font = '11px sans-serif';
  let start = 0;
  for (let r = 1; r <= rows.length; r++) {
    if (r === rows.length || rows[r].block !== rows[start].block || byCluster) {
      spans.push({block: rows[start].block, from: start, to: r});
      const y = start * rowH;
      ctx.fillStyle = '#bbb'; ctx.fillRect(0, y, 150, 1); ctx.fillStyle = '#333';
      if ((r - start) * rowH >= 9 || rowH >= 9) ctx.fillText(rows[start].block || '(no block)', 2, y + 10);
      start = r;
    }
  }
  if (clusters) {
    rows.forEach((row, r) => {
      if (row.cluster === undefined) return;
      ctx.fillStyle = row.cluster >= 0 ? CLUSTER_COLORS[row.cluster % CLUSTER_COLORS.length] : '#fff';
      ctx.fillRect(144, r * rowH, 6, rowH);
    });
  }
  return spans;
}

function pointAt(canvas, e, rowH, width) {  // the row and the pixel column under the pointer
  const rect = canvas.getBoundingClientRect();
  return {r: Math.floor((e.clientY - rect.top) / rowH), x: Math.floor(((e.clientX - rect.left) / rect.width) * width)};
}

function showTooltip(tooltip, e, text) {
  tooltip.textContent = text;
  Object.assign(tooltip.style, {display: 'block', left: `${e.pageX + 12}px`, top: `${e.pageY + 12}px`});
}

function align(rowsA, rowsB) {  // both runs' rows on one list of labels: A's order, B's own rows after their neighbour
  const inA = new Set(rowsA.map((row) => row.label)), after = new Map();
  let anchor = null;
  for (const row of rowsB) {
    if (inA.has(row.label)) anchor = row.label;
    else after.set(anchor, [...(after.get(anchor) || []), row.label]);
  }
  const labels = [...(after.get(null) || [])];
  for (const row of rowsA) labels.push(row.label, ...(after.get(row.label) || []));
  const on = (rows, other) => {  // a label only the other run has: a row without members, shown as missing
    const mine = new Map(rows.map((row) => [row.label, row])), theirs = new Map(other.map((row) => [row.label, row]));
    return labels.map((label) => mine.get(label) || {label, block: theirs.get(label).block, members: [],
      cluster: theirs.get(label).cluster === undefined ? undefined : -1});
  };
  return [on(rowsA, rowsB), on(rowsB, rowsA)];
}

class RunPanel {
  constructor(root, run, state, onData) {
    this.run = run; this.state = state; this.onData = onData; this.data = null; this.version = null;
    this.selectedColumn = -1; this.selection = null;
    this.status = el('div', {class: 'rwc-status'});
    this.legend = el('canvas', {width: 360, height: 34, class: 'rwc-legend'});
    this.labels = el('canvas', {width: 150, height: 10});
    this.heatmap = el('canvas', {class: 'rwc-heatmap', width: 800, height: 10, role: 'img'});
    this.axisCanvas = el('canvas', {class: 'rwc-axis', width: 800, height: 30, role: 'img', style: 'margin-left: 150px'});
    this.layerList = el('ol', {class: 'rwc-layer-list'});
    this.layerSummary = el('summary', {}, 'Layers');
    this.layerDetails = el('details', {class: 'rwc-layers', ontoggle: () => this.listLayers()}, this.layerSummary, this.layerList);
    this.tooltip = el('div', {id: 'rwc-tooltip', class: 'rwc-tooltip', style: 'display:none'});
    this.curveTitle = el('div', {class: 'rwc-curve-title'}, 'Click a row (or a block label) for its curve.');
    this.curves = el('canvas', {class: 'rwc-curves', width: 560, height: 240});
    this.curveBox = el('div', {}, this.curveTitle, this.curves);
    this.depthTitle = el('div', {class: 'rwc-depth-title'}, 'Depth profile: click a column.');
    this.depth = el('canvas', {width: 400, height: 240});
    this.decisions = el('ul', {class: 'rwc-decisions'});
    this.clusterLegend = el('div', {class: 'rwc-cluster-legend'});
    this.scroller = el('div', {class: 'rwc-scroller'}, el('div', {style: 'display:flex'}, this.labels, this.heatmap));
    this.node = el('section', {class: 'rwc-panel', 'data-run': run},
      el('h3', {}, run), this.status, this.clusterLegend, el('div', {class: 'rwc-controls'}, this.legend),
      this.scroller, this.axisCanvas, this.layerDetails, this.tooltip,
      el('div', {class: 'rwc-below'}, this.curveBox,
        el('div', {}, this.depthTitle, this.depth),
        el('div', {}, el('div', {class: 'rwc-decisions-title'}, 'Decisions and health flags'), this.decisions)));
    root.append(this.node);
    this.heatmap.addEventListener('mousemove', (e) => this.hover(e));
    this.heatmap.addEventListener('mouseleave', () => { this.tooltip.style.display = 'none'; });
    this.heatmap.addEventListener('click', (e) => this.click(e));
    this.labels.addEventListener('click', (e) => this.clickLabel(e));
  }

  async load(version) {
    if (version !== undefined && version === this.version && this.data) return;
    try {
      const started = performance.now();
      const data = await fetchRun(this.run, Math.max(200, Math.min(4000, this.heatmap.parentNode.clientWidth || 1000)));
      this.version = version; this.data = data;
      this.index = new Map((data.header.layers || []).map((layer, i) => [layer, i]));
      this.node.dataset.fetchMs = (performance.now() - started).toFixed(1);
      this.node.dataset.bytes = String(data.bytes);
      this.onData();
    } catch (err) {
      this.status.textContent = `Could not read this run: ${err.message}`;
    }
  }

  width() {
    return Math.max(200, this.scroller.clientWidth - 175);  // room for the labels and a scroll bar
  }

  left(j) {  // where column j's steps begin: after the column before it; the first one spacing before its first step
    const h = this.data.header;
    if (j) return h.last_steps[j - 1];
    const n = h.measurements, last = h.last_steps[h.last_steps.length - 1];
    return Math.max(0, h.first_steps[0] - (n > 1 ? (last - h.first_steps[0]) / (n - 1) : h.first_steps[0]));
  }

  span(zoom) {  // the steps the columns measured within zoom cover, or null
    const h = this.data.header, [a, b] = zoom || [-Infinity, Infinity];
    const cols = h.last_steps.map((_, j) => j).filter((j) => h.last_steps[j] >= a && h.first_steps[j] <= b);
    return cols.length ? [this.left(cols[0]), h.last_steps[cols[cols.length - 1]]] : null;
  }

  columnAt(step) {  // the column whose steps hold step, or -1
    const ends = this.data.header.last_steps;
    let lo = 0, hi = ends.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (ends[mid] < step) lo = mid + 1; else hi = mid; }
    return lo < ends.length && step > this.left(lo) ? lo : -1;
  }

  columns() {  // the columns the step axis shows
    const h = this.data.header, axis = this.stepAxis;
    return h.last_steps.map((_, j) => j).filter((j) => h.last_steps[j] > axis.from && this.left(j) < axis.to);
  }

  rows() {
    const h = this.data.header, rows = [];
    const cluster = (layer) => (h.clusters && layer in h.clusters.labels ? h.clusters.labels[layer] : -1);
    if (this.state.collapse) {
      const blocks = [...new Set(h.blocks)];
      for (const block of blocks) rows.push({label: block, block, members: h.layers.map((_, i) => i).filter((i) => h.blocks[i] === block)});
    } else {
      h.layers.forEach((layer, i) => rows.push({label: layer, block: h.blocks[i], members: [i], cluster: cluster(layer)}));
      if (this.state.byCluster && h.clusters) rows.sort((a, b) => (a.cluster < 0) - (b.cluster < 0) || a.cluster - b.cluster);
    }
    return rows;
  }

  cell(i, j, perStep = this.state.perStep) {  // one layer's value in column j; per optimizer step with perStep
    const {values, header} = this.data, v = values[i * header.shape[1] + j];
    return perStep && header.intervals ? v / header.intervals[j] : v;
  }

  value(row, j, perStep = this.state.perStep) {  // a row's value: its layer's, or its layers' geometric mean
    if (row.members.length === 1) return this.cell(row.members[0], j, perStep);
    let sum = 0, count = 0;
    for (const i of row.members) { const v = this.cell(i, j, perStep); if (v > 0) { sum += Math.log10(v); count++; } }
    return count ? 10 ** (sum / count) : NaN;
  }

  rowValues(row, perStep) {
    return Float64Array.from({length: this.data.header.shape[1]}, (_, j) => this.value(row, j, perStep));
  }

  valueRange() {  // log10 of the smallest and largest positive value
    const h = this.data.header;
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < h.shape[0]; i++) {
      for (let j = 0; j < h.shape[1]; j++) {
        const v = this.cell(i, j);
        if (v > 0 && v < Infinity) { const l = Math.log10(v); if (l < lo) lo = l; if (hi < l) hi = l; }
      }
    }
    if (!(hi > lo)) { lo = (lo === Infinity ? -4 : lo) - 1; hi = lo + 2; }
    return [lo, hi];
  }

  paint(frame) {  // the heatmap and all around it, on the frame's rows, colour range and step axis
    const started = performance.now(), h = this.data.header;
    this.warn(h);
    if (!h.layers) { this.heatmap.height = 0; this.labels.height = 0; return; }
    const {rows, range, axis} = frame, n = h.shape[1], [lo, hi] = range, scale = 255 / (hi - lo);
    Object.assign(this, {currentRows: rows, range, stepAxis: axis, rowH: rowHeight(rows.length)});
    this.pixelCols = Int32Array.from({length: axis.width}, (_, x) => this.columnAt(axis.stepAt(x)));
    const pixels = new Uint32Array(axis.width * rows.length), colours = new Uint32Array(n);
    rows.forEach((row, r) => {
      for (let j = 0; j < n; j++) {
        const v = this.value(row, j);
        colours[j] = v > 0 ? VIRIDIS_PIXELS[Math.min(255, Math.max(0, Math.round((Math.log10(v) - lo) * scale)))] : v === 0 ? ZERO_PIXEL : MISSING_PIXEL;
      }
      for (let x = 0, o = r * axis.width; x < axis.width; x++) { const j = this.pixelCols[x]; pixels[o + x] = j < 0 ? 0 : colours[j]; }
    });
    this.drawMarks(blit(this.heatmap, pixels, axis.width, rows.length, this.rowH), rows);
    this.blockSpans = drawRowLabels(this.labels, rows, this.rowH, h.clusters, this.state.byCluster);
    this.drawLegend();
    const cols = this.columns();
    this.drawAxis(cols);
    this.heatmap.setAttribute('aria-label', `RWC heatmap: ${rows.length} rows (the list of layers below names them) x ` +
      `${cols.length} columns, steps ${cols.length ? h.first_steps[cols[0]] : '-'} to ${cols.length ? h.last_steps[cols[cols.length - 1]] : '-'}`);
    this.layerSummary.textContent = `${rows.length} ${this.state.collapse ? 'blocks' : 'layers'}, in the order of the rows (names to select or read aloud)`;
    this.listLayers();
    Object.assign(this.heatmap.dataset, {rows: rows.length, columns: cols.length, layers: h.layers.length,
      clusters: h.clusters ? h.clusters.clusters.length : 0, steps: JSON.stringify([axis.from, axis.to]),
      end: Math.min(axis.x(h.last_steps[n - 1]), axis.width).toFixed(1), drawMs: (performance.now() - started).toFixed(1)});
    this.drawDecisions(h);
    this.drawClusterLegend(h);
    this.curveBox.hidden = Boolean(this.state.compare && this.state.compare[0] !== this);  // the first run's shows both
    if (this.selection) this.drawCurves();
    if (this.selectedColumn >= 0) this.drawDepth(this.selectedColumn);
  }

  warn(h) {
    const parts = [];
    if (!h.layers) parts.push('This run has no RWC values.');
    else parts.push(`${h.layers.length} layers x ${h.measurements} measurements (from its ${h.source})` +
      (h.shape[1] < h.measurements ? `, shown in ${h.shape[1]} columns` : '') + '.');
    for (const w of h.warnings) parts.push(`Warning: ${w}`);
    this.status.textContent = parts.join(' ');
  }

  drawMarks(ctx, rows) {
    const h = this.data.header, axis = this.stepAxis;
    for (const mark of [...h.decisions, ...(h.health || [])]) {
      const j = this.columnAt(mark.step);
      const r = j < 0 ? -1 : rows.findIndex((row) => (mark.kind === 'frozen' ? row.block === mark.name : row.label === mark.name));
      if (r < 0) continue;
      const x0 = axis.x(this.left(j)), x1 = axis.x(h.last_steps[j]);
      ctx.fillStyle = mark.kind === 'frozen' ? '#ffffff' : mark.kind === 'dead' ? '#ff00ff' : '#ff3030';
      ctx.fillRect(x0, r * this.rowH, Math.max(2, x1 - x0), Math.max(2, this.rowH));
    }
  }

  drawLegend() {
    const ctx = this.legend.getContext('2d'), [lo, hi] = this.range;
    const low = plain(10 ** lo), high = plain(10 ** hi);
    ctx.clearRect(0, 0, 360, 34);
    for (let x = 0; x < 240; x++) { const c = viridis(x / 239); ctx.fillStyle = `rgb(${c})`; ctx.fillRect(x, 0, 1, 14); }
    ctx.fillStyle = `rgb(${MISSING})`; ctx.fillRect(250, 0, 14, 14);
    ctx.fillStyle = '#000'; ctx.fillRect(300, 0, 14, 14);
    ctx.fillStyle = '#333'; ctx.font = '10px sans-serif';
    ctx.fillText(low, 0, 27); ctx.fillText('RWC (log scale)', 85, 27);
    ctx.fillText(high, 240 - ctx.measureText(high).width, 27);
    ctx.fillText('missing', 246, 27); ctx.fillText('0', 304, 27);
    const shared = this.state.compare ? ', one scale for both runs' : '';
    this.legend.setAttribute('aria-label', `Colour scale: RWC from ${low} to ${high}, log scale${shared}; grey: missing; black: 0`);
    Object.assign(this.legend.dataset, {low, high});
  }

  drawAxis(cols) {
    const h = this.data.header, axis = this.stepAxis, width = axis.width, ctx = this.axisCanvas.getContext('2d');
    this.axisCanvas.width = width;
    ctx.clearRect(0, 0, width, 30);
    ctx.fillStyle = '#444'; ctx.strokeStyle = '#888'; ctx.font = '10px sans-serif';
    const used = cols.length ? axis.x(h.last_steps[cols[cols.length - 1]]) - axis.x(this.left(cols[0])) : 0;
    const count = Math.min(cols.length, Math.max(2, Math.floor(Math.min(used, width) / 110))), ticks = [];
    for (let k = 0; k < count; k++) {
      const j = cols[count > 1 ? Math.round((k * (cols.length - 1)) / (count - 1)) : 0];
      const x = Math.min(Math.max(axis.x(h.first_steps[j]), 0), width), step = String(h.first_steps[j]), epoch = h.epochs[j];
      const text = epoch >= 0 ? `${step} (epoch ${epoch})` : step;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, 5); ctx.stroke();
      ctx.fillText(text, Math.min(Math.max(x - ctx.measureText(text).width / 2, 0), width - ctx.measureText(text).width), 16);
      ticks.push(text);
    }
    ctx.fillText('step', 0, 28);
    this.axisCanvas.dataset.ticks = JSON.stringify(ticks);
    this.axisCanvas.setAttribute('aria-label', `Steps: ${ticks.join(', ')}`);
  }

  listLayers() {
    if (!this.layerDetails.open || !this.currentRows) return;
    this.layerList.replaceChildren(...this.currentRows.map((row) => el('li', {},
      el('button', {type: 'button', class: 'rwc-layer-name', onclick: () => this.state.select(this, {title: row.label, label: row.label})}, row.label))));
  }

  select(selection) {
    this.selection = selection;
    this.drawCurves();
  }

  membersOf(selection) {  // this run's layers a selection (a row's label, or a block) names
    const h = this.data.header;
    if (selection.block !== undefined) return h.layers.map((_, i) => i).filter((i) => h.blocks[i] === selection.block);
    const row = this.currentRows.find((r) => r.label === selection.label);
    return row ? row.members : [];
  }

  cellAt(e) {
    const {r, x} = pointAt(this.heatmap, e, this.rowH, this.stepAxis.width);
    const j = x >= 0 && x < this.pixelCols.length ? this.pixelCols[x] : -1;
    return r >= 0 && r < this.currentRows.length && j >= 0 ? {row: this.currentRows[r], j} : null;
  }

  hover(e) {
    const cell = this.cellAt(e);
    if (!cell) { this.tooltip.style.display = 'none'; return; }
    const h = this.data.header, {row, j} = cell;
    const steps = h.first_steps[j] === h.last_steps[j] ? `${h.first_steps[j]}` : `${h.first_steps[j]}-${h.last_steps[j]}`;
    const epoch = h.epochs[j] >= 0 ? ` | epoch ${h.epochs[j]}` : '';  // unknown epochs are not shown
    const interval = h.intervals ? ` | over ${Number(h.intervals[j].toPrecision(3))} steps` : '';
    const per = this.state.perStep && h.intervals ? ' per step' : '';
    showTooltip(this.tooltip, e, `${row.label} | block ${row.block || '-'} | step ${steps}${epoch}${interval} | RWC${per} ${fmt(this.value(row, j))}`);
  }

  click(e) {
    const cell = this.cellAt(e);
    if (!cell) return;
    this.selectedColumn = cell.j;
    this.state.select(this, {title: cell.row.label, label: cell.row.label});
    this.drawDepth(cell.j);
  }

  clickLabel(e) {
    const y = e.clientY - this.labels.getBoundingClientRect().top;
    const span = (this.blockSpans || []).find((s) => y >= s.from * this.rowH && y < s.to * this.rowH);
    if (span) this.state.select(this, {title: `block ${span.block}`, block: span.block});
  }

  drawCurves() {  // the selection's curves over the steps; in a comparison, both runs' (A solid, B dashed)
    const h = this.data.header, axis = this.stepAxis, runs = this.state.compare || [this], selection = this.selection;
    const box = {x: 40, y: 8, w: 500, h: 200}, ctx = this.curves.getContext('2d');
    ctx.clearRect(0, 0, 560, 240);
    const [lo, hi] = this.range, x = (step) => box.x + (axis.x(step) / axis.width) * box.w;
    const y = (v) => box.y + box.h - ((Math.log10(v) - lo) / (hi - lo)) * box.h;
    const members = this.membersOf(selection);
    const clusterOf = h.clusters && members.length === 1 ? h.clusters.labels[h.layers[members[0]]] : undefined;
    const summary = clusterOf >= 0 && runs.length === 1 ? h.clusters.clusters.find((c) => c.cluster_id === clusterOf) : null;
    ctx.save(); ctx.beginPath(); ctx.rect(box.x, box.y, box.w, box.h); ctx.clip();
    if (summary) {  // the cluster's quartile band, on the cluster's own steps
      ctx.fillStyle = 'rgba(0, 114, 178, 0.18)'; ctx.beginPath();
      const points = h.clusters.steps.map((s, k) => [s, summary.lower[k], summary.upper[k]]).filter((p) => p[1] > 0 && p[2] > 0);
      points.forEach(([s, lower], k) => (k ? ctx.lineTo(x(s), y(lower)) : ctx.moveTo(x(s), y(lower))));
      [...points].reverse().forEach(([s, , upper]) => ctx.lineTo(x(s), y(upper)));
      ctx.fill();
    }
    const shown = runs.map((panel, k) => {
      const mine = panel === this ? members : panel.membersOf(selection), first = panel.data.header.first_steps;
      const cols = panel.columns();
      ctx.setLineDash(k ? [6, 3] : []);
      mine.slice(0, 200).forEach((i, m) => {
        ctx.strokeStyle = runs.length > 1 ? RUN_COLORS[k] : CLUSTER_COLORS[m % CLUSTER_COLORS.length]; ctx.beginPath();
        let started = false;
        cols.forEach((j) => {
          const v = panel.cell(i, j);
          if (!(v > 0)) { started = false; return; }
          if (started) ctx.lineTo(x(first[j]), y(v)); else { ctx.moveTo(x(first[j]), y(v)); started = true; }
        });
        ctx.stroke();
      });
      return mine.length ? panel.run : null;
    });
    ctx.restore();
    logAxes(ctx, box, lo, hi, 'step');
    const [from, to] = [String(Math.round(axis.from)), String(Math.round(axis.to))];
    ctx.fillText(from, box.x, box.y + box.h + 12); ctx.fillText(to, box.x + box.w - ctx.measureText(to).width, box.y + box.h + 12);
    const count = members.length > 1 ? ` (${members.length} layers)` : '', cluster = summary ? `, cluster ${clusterOf} (band: its quartiles)` : '';
    const which = runs.length > 1 ? ': ' + runs.map((p, k) => `${p.run} ${k ? 'dashed' : 'solid'}${shown[k] ? '' : ' (not in this run)'}`).join(', ') : '';
    this.curveTitle.textContent = `${selection.title}${count}${cluster}${which}`;
    this.curveTitle.id = 'rwc-curve-title';
    this.curves.dataset.runs = JSON.stringify(shown.filter(Boolean));
  }

  drawDepth(j) {
    const h = this.data.header, ctx = this.depth.getContext('2d');
    const points = h.layers.map((_, i) => [i, this.cell(i, j)]).filter(([, v]) => v > 0);
    ctx.clearRect(0, 0, 400, 240);
    if (points.length < 2) return;
    const box = {x: 40, y: 8, w: 340, h: 200}, [lo, hi] = this.range;
    ctx.fillStyle = '#0072b2';
    for (const [i, v] of points) {
      ctx.fillRect(box.x + (i / Math.max(h.layers.length - 1, 1)) * box.w - 1.5,
        box.y + box.h - ((Math.log10(v) - lo) / (hi - lo)) * box.h - 1.5, 3, 3);
    }
    logAxes(ctx, box, lo, hi, 'depth (layer order)');
    const rho = spearman(points.map((p) => p[0]), points.map((p) => p[1]));
    this.depthTitle.textContent = `Depth profile at step ${h.first_steps[j]}: Spearman ${rho.toFixed(2)} (${points.length} layers)`;
  }

  drawClusterLegend(h) {
    const clusters = h.clusters ? h.clusters.clusters : [];
    this.clusterLegend.replaceChildren(...(clusters.length ? ['Clusters (strip left of the rows): '] : []), ...clusters.map((c) =>
      el('span', {style: 'margin-right: 10px'},
        el('span', {style: `display:inline-block;width:10px;height:10px;background:${CLUSTER_COLORS[c.cluster_id % CLUSTER_COLORS.length]}`}),
        ` ${c.cluster_id}: ${c.members.length} layers`)));
  }

  drawDecisions(h) {
    this.decisions.replaceChildren(...[...h.decisions, ...(h.health || [])].map((d) =>
      el('li', {}, `${d.kind === 'frozen' ? 'froze block' : d.kind === 'dead' ? 'dead layer' : 'runaway layer'} ${d.name} at step ${d.step}`)));
    if (!this.decisions.children.length) this.decisions.append(el('li', {}, 'none'));
  }
}

class RatioPanel {  // run B's RWC over run A's, per layer and step where both measured: log scale, diverging colours
  constructor(root, state) {
    this.state = state;
    this.title = el('h3', {});
    this.status = el('div', {class: 'rwc-status'});
    this.legend = el('canvas', {width: 360, height: 34, class: 'rwc-ratio-legend'});
    this.labels = el('canvas', {width: 150, height: 10});
    this.heatmap = el('canvas', {class: 'rwc-ratio-map', width: 800, height: 10, role: 'img'});
    this.axisCanvas = el('canvas', {width: 800, height: 30, role: 'img', style: 'margin-left: 150px'});
    this.tooltip = el('div', {id: 'rwc-ratio-tooltip', class: 'rwc-tooltip', style: 'display:none'});
    this.node = el('section', {class: 'rwc-ratio', hidden: ''}, this.title, this.status,
      el('div', {class: 'rwc-controls'}, this.legend),
      el('div', {class: 'rwc-scroller'}, el('div', {style: 'display:flex'}, this.labels, this.heatmap)), this.axisCanvas, this.tooltip);
    root.append(this.node);
    this.heatmap.addEventListener('mousemove', (e) => this.hover(e));
    this.heatmap.addEventListener('mouseleave', () => { this.tooltip.style.display = 'none'; });
    this.heatmap.addEventListener('click', (e) => {
      const at = this.at(e);
      if (at) this.state.select(this.a, {title: at.label, label: at.label});
    });
  }

  hide() {
    this.node.hidden = true;
  }

  paint(a, b, rowsA, rowsB, axis) {
    const started = performance.now(), width = axis.width, rows = rowsA.length;
    Object.assign(this, {a, b, rowsA, rowsB, axis, rowH: rowHeight(rows)});
    this.perStep = Boolean(a.data.header.intervals && b.data.header.intervals);  // comparable whatever the intervals
    const logs = new Float32Array(rows * width).fill(NaN), kinds = new Uint8Array(rows * width);  // 0: outside a run
    let top = 0;
    for (let r = 0; r < rows; r++) {
      const va = a.rowValues(rowsA[r], this.perStep), vb = b.rowValues(rowsB[r], this.perStep);
      for (let x = 0, o = r * width; x < width; x++) {
        const ja = a.pixelCols[x], jb = b.pixelCols[x];
        if (ja < 0 || jb < 0) continue;
        kinds[o + x] = 1;
        const l = logRatio(va[ja], vb[jb]);
        logs[o + x] = l;
        if (Number.isFinite(l) && Math.abs(l) > top) top = Math.abs(l);
      }
    }
    this.top = top > 0 ? top : 1;
    const pixels = new Uint32Array(rows * width);
    for (let k = 0; k < pixels.length; k++) {
      const t = Math.min(Math.max(logs[k] / this.top, -1), 1);
      if (kinds[k]) pixels[k] = Number.isNaN(t) ? MISSING_PIXEL : DIVERGING_PIXELS[Math.round((t + 1) * 128)];
    }
    blit(this.heatmap, pixels, width, rows, this.rowH);
    drawRowLabels(this.labels, rowsA, this.rowH, null, this.state.byCluster);
    this.drawLegend();
    this.drawAxis();
    this.title.textContent = `${b.run} / ${a.run}`;
    this.status.textContent = `Each layer's RWC in ${b.run} over its RWC in ${a.run}, ` +
      (this.perStep ? 'per optimizer step' : 'as measured (a run\'s intervals are unknown)') + ', at the steps both runs ' +
      `measured: red where the layer changes more in ${b.run}, blue where less; grey: a layer one run lacks or has no value for.`;
    this.node.hidden = false;
    this.heatmap.setAttribute('aria-label', `Ratio heatmap of ${b.run} over ${a.run}: ${rows} rows x steps ${axis.from} to ${axis.to}`);
    Object.assign(this.heatmap.dataset, {rows, steps: JSON.stringify([axis.from, axis.to]), drawMs: (performance.now() - started).toFixed(1)});
  }

  drawLegend() {
    const ctx = this.legend.getContext('2d'), low = plain(10 ** -this.top), high = plain(10 ** this.top);
    ctx.clearRect(0, 0, 360, 34);
    for (let x = 0; x < 240; x++) { ctx.fillStyle = `rgb(${diverging((x / 239) * 2 - 1)})`; ctx.fillRect(x, 0, 1, 14); }
    ctx.fillStyle = `rgb(${MISSING})`; ctx.fillRect(250, 0, 14, 14);
    ctx.fillStyle = '#333'; ctx.font = '10px sans-serif';
    ctx.fillText(low, 0, 27); ctx.fillText('1', 118, 27); ctx.fillText(high, 240 - ctx.measureText(high).width, 27);
    ctx.fillText('missing', 246, 27);
    this.legend.setAttribute('aria-label', `Colour scale: ratio from ${low} to ${high}, log scale; white: equal; grey: missing`);
    Object.assign(this.legend.dataset, {low, high});
  }

  drawAxis() {
    const axis = this.axis, ctx = this.axisCanvas.getContext('2d'), ticks = axis.ticks(Math.max(2, Math.floor(axis.width / 110)));
    this.axisCanvas.width = axis.width;
    ctx.fillStyle = '#444'; ctx.strokeStyle = '#888'; ctx.font = '10px sans-serif';
    for (const step of ticks) {
      const x = axis.x(step), text = String(step);
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, 5); ctx.stroke();
      ctx.fillText(text, Math.min(Math.max(x - ctx.measureText(text).width / 2, 0), axis.width - ctx.measureText(text).width), 16);
    }
    ctx.fillText('step', 0, 28);
    this.axisCanvas.setAttribute('aria-label', `Steps: ${ticks.join(', ')}`);
  }

  at(e) {  // the row, both runs' columns and the step under the pointer, where both measured
    const {r, x} = pointAt(this.heatmap, e, this.rowH, this.axis.width);
    if (r < 0 || r >= this.rowsA.length || x < 0 || x >= this.axis.width) return null;
    const ja = this.a.pixelCols[x], jb = this.b.pixelCols[x];
    return ja < 0 || jb < 0 ? null : {label: this.rowsA[r].label, r, ja, jb, step: Math.round(this.axis.stepAt(x))};
  }

  hover(e) {
    const at = this.at(e);
    if (!at) { this.tooltip.style.display = 'none'; return; }
    const va = this.a.value(this.rowsA[at.r], at.ja, this.perStep), vb = this.b.value(this.rowsB[at.r], at.jb, this.perStep);
    const l = logRatio(va, vb), ratio = Number.isNaN(l) ? 'missing' : Number((10 ** l).toPrecision(3));
    const per = this.perStep ? ' per step' : '';
    showTooltip(this.tooltip, e, `${at.label} | step ${at.step} | RWC${per} ${this.a.run} ${fmt(va)}, ${this.b.run} ${fmt(vb)} | ratio ${ratio}`);
  }
}

export async function render() {
  document.body.style.cssText = 'font-family: Roboto, sans-serif; margin: 12px; color: #212121';
  document.head.append(el('style', {}, `
    .rwc-panel, .rwc-ratio { margin-bottom: 28px; } .rwc-status { margin: 4px 0; font-size: 13px; }
    .rwc-scroller { max-height: 60vh; overflow-y: auto; border: 1px solid #ddd; } .rwc-scroller canvas { flex: none; }
    .rwc-heatmap, .rwc-ratio-map { cursor: crosshair; } .rwc-below { display: flex; gap: 24px; flex-wrap: wrap; margin-top: 8px; }
    .rwc-tooltip { position: absolute; background: #212121; color: #fff; padding: 4px 8px; font-size: 12px;
      border-radius: 3px; pointer-events: none; z-index: 10; }
    .rwc-decisions { font-size: 12px; max-height: 220px; overflow-y: auto; }
    .rwc-controls { font-size: 13px; display: flex; align-items: center; gap: 4px; margin: 4px 0; }
    .rwc-cluster-legend { font-size: 12px; margin: 2px 0 6px; }
    .rwc-layers { font-size: 12px; margin: 4px 0; } .rwc-layer-list { max-height: 240px; overflow-y: auto; }
    .rwc-layer-name { border: none; background: none; padding: 0; font: inherit; cursor: pointer; text-align: left; }`));
  const state = {collapse: false, byCluster: false, perStep: false, zoom: null, compare: null};
  state.select = (panel, selection) => (state.compare ? state.compare[0] : panel).select(selection);
  const pickA = el('select', {id: 'rwc-run'}), pickB = el('select', {id: 'rwc-run-b'});
  const message = el('span', {id: 'rwc-message', style: 'margin-left: 12px; font-size: 13px'});
  const clusterNow = el('button', {id: 'rwc-cluster-now'}, 'Cluster now');
  const toggles = [['collapse', 'Collapse blocks'], ['byCluster', 'Order by cluster'], ['perStep', 'Per step']].map(([key, text]) =>
    el('label', {style: 'margin-left: 12px'}, el('input', {type: 'checkbox', id: `rwc-${key}`, onchange: (e) => { state[key] = e.target.checked; draw(); }}), ` ${text}`));
  const zoomTo = () => {
    const a = Number(from.value || -Infinity), b = Number(to.value || Infinity);
    state.zoom = a <= b ? [a, b] : null;
    draw();
  };
  const from = el('input', {type: 'number', id: 'rwc-from', placeholder: 'from step', style: 'width:7em', onchange: zoomTo});
  const to = el('input', {type: 'number', id: 'rwc-to', placeholder: 'to step', style: 'width:7em', onchange: zoomTo});
  const all = el('button', {onclick: () => { from.value = ''; to.value = ''; zoomTo(); }}, 'all steps');
  const area = el('div', {id: 'rwc-panels'});
  document.body.append(el('div', {}, 'Run ', pickA, ' beside ', pickB, ' ', clusterNow, ...toggles, message),
    el('div', {class: 'rwc-controls'}, 'Steps ', from, ' to ', to, ' ', all), area);
  let panels = [], ratio = null, versions = {}, shownAt = performance.now();

  function draw() {  // two runs with values: one colour scale, one step axis, rows aligned by name, and their ratio
    const started = performance.now(), ready = panels.filter((p) => p.data && p.data.header.layers);
    state.compare = panels.length === 2 && ready.length === 2 ? panels : null;
    const spans = (shown) => shown.map((p) => p.span(state.zoom)).some(Boolean) ? shown.map((p) => p.span(state.zoom)) : shown.map((p) => p.span(null));
    const axisOver = (shown) => {
      const known = spans(shown).filter(Boolean);
      return new StepAxis(Math.min(...known.map((s) => s[0])), Math.max(...known.map((s) => s[1])), shown[0].width());
    };
    if (state.compare) {
      const [a, b] = panels, [rowsA, rowsB] = align(a.rows(), b.rows()), axis = axisOver(panels);
      const [ra, rb] = [a.valueRange(), b.valueRange()], range = [Math.min(ra[0], rb[0]), Math.max(ra[1], rb[1])];
      a.paint({rows: rowsA, range, axis});
      b.paint({rows: rowsB, range, axis});
      ratio.paint(a, b, rowsA, rowsB, axis);
    } else {
      for (const p of panels.filter((q) => q.data)) p.paint(ready.includes(p) ? {rows: p.rows(), range: p.valueRange(), axis: axisOver([p])} : null);
      if (ratio) ratio.hide();
    }
    area.dataset.drawMs = (performance.now() - started).toFixed(1);
    area.dataset.shownMs = (performance.now() - shownAt).toFixed(1);  // since the runs were picked
  }

  const show = () => {
    area.replaceChildren();
    shownAt = performance.now();
    panels = [pickA.value, pickB.value].filter((run, k, runs) => run && runs.indexOf(run) === k).map((run) => new RunPanel(area, run, state, draw));
    ratio = panels.length === 2 ? new RatioPanel(area, state) : null;
    panels.forEach((p) => p.load(versions[p.run]));
  };
  const refresh = async () => {
    const listing = await (await fetch('runs')).json();
    versions = Object.fromEntries(listing.runs.map((r) => [r.run, r.version]));
    clusterNow.disabled = !listing.cluster_now;
    const names = listing.runs.map((r) => r.run);
    if (!names.length) message.textContent = 'No run here holds RWC values: train with RelativeWeightChange and a logger.';
    const known = [...pickA.options].map((o) => o.value).filter(Boolean);
    if (names.join('\n') !== known.join('\n')) {
      const [a, b] = [pickA.value, pickB.value];
      pickA.replaceChildren(...names.map((n) => el('option', {value: n}, n)));
      pickB.replaceChildren(el('option', {value: ''}, '(none)'), ...names.map((n) => el('option', {value: n}, n)));
      pickA.value = names.includes(a) ? a : names[0] || ''; pickB.value = names.includes(b) ? b : '';
      show();
    } else {
      panels.forEach((p) => p.load(versions[p.run]));
    }
  };
  pickA.addEventListener('change', show);
  pickB.addEventListener('change', show);
  clusterNow.addEventListener('click', async () => {
    message.textContent = `Clustering ${pickA.value}...`;
    const response = await fetch(`cluster?run=${encodeURIComponent(pickA.value)}`, {method: 'POST', headers: {'X-RWC-Request': '1'}});
    const answer = await response.json();
    message.textContent = response.ok ? `${answer.clusters} clusters of ${answer.layers} layers.` : `Not clustered: ${answer.error}`;
    await refresh();
  });
  await refresh();
  setInterval(() => refresh().catch((err) => { message.textContent = `Could not reach TensorBoard: ${err.message}`; }), POLL_MS);
}
