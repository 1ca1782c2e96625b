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

class RunPanel {
  constructor(root, run, state) {
    this.run = run; this.state = state; this.data = null; this.version = null;
    this.zoom = null; this.selectedColumn = -1; this.selection = null;
    this.status = el('div', {class: 'rwc-status'});
    this.legend = el('canvas', {width: 360, height: 34, class: 'rwc-legend'});
    this.labels = el('canvas', {width: 150, height: 10});
    this.heatmap = el('canvas', {class: 'rwc-heatmap', width: 800, height: 10, role: 'img'});
    this.axis = el('canvas', {class: 'rwc-axis', width: 800, height: 30, role: 'img', style: 'margin-left: 150px'});
    this.layerList = el('ol', {class: 'rwc-layer-list'});
    this.layerSummary = el('summary', {}, 'Layers');
    this.layerDetails = el('details', {class: 'rwc-layers', ontoggle: () => this.listLayers()}, this.layerSummary, this.layerList);
    this.tooltip = el('div', {id: 'rwc-tooltip', class: 'rwc-tooltip', style: 'display:none'});
    this.curveTitle = el('div', {class: 'rwc-curve-title'}, 'Click a row (or a block label) for its curve.');
    this.curves = el('canvas', {width: 560, height: 240});
    this.depthTitle = el('div', {class: 'rwc-depth-title'}, 'Depth profile: click a column.');
    this.depth = el('canvas', {width: 400, height: 240});
    this.decisions = el('ul', {class: 'rwc-decisions'});
    this.clusterLegend = el('div', {class: 'rwc-cluster-legend'});
    this.from = el('input', {type: 'number', placeholder: 'from step', style: 'width:7em', onchange: () => this.zoomTo()});
    this.to = el('input', {type: 'number', placeholder: 'to step', style: 'width:7em', onchange: () => this.zoomTo()});
    const reset = el('button', {onclick: () => { this.zoom = null; this.from.value = ''; this.to.value = ''; this.draw(); }}, 'all steps');
    this.scroller = el('div', {class: 'rwc-scroller'}, el('div', {style: 'display:flex'}, this.labels, this.heatmap));
    this.node = el('section', {class: 'rwc-panel', 'data-run': run},
      el('h3', {}, run), this.status, this.clusterLegend,
      el('div', {class: 'rwc-controls'}, 'Steps ', this.from, ' to ', this.to, ' ', reset, ' ', this.legend),
      this.scroller, this.axis, this.layerDetails, this.tooltip,
      el('div', {class: 'rwc-below'},
        el('div', {}, this.curveTitle, this.curves),
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
      this.node.dataset.fetchMs = (performance.now() - started).toFixed(1);
      this.node.dataset.bytes = String(data.bytes);
      this.draw();
    } catch (err) {
      this.status.textContent = `Could not read this run: ${err.message}`;
    }
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

  columns() {
    const h = this.data.header, all = h.first_steps.map((_, j) => j);
    if (!this.zoom) return all;
    return all.filter((j) => h.last_steps[j] >= this.zoom[0] && h.first_steps[j] <= this.zoom[1]);
  }

  cell(i, j) {  // one layer's value in column j, per optimizer step in the per-step view
    const {values, header} = this.data, v = values[i * header.shape[1] + j];
    return this.state.perStep && header.intervals ? v / header.intervals[j] : v;
  }

  value(row, j) {
    if (row.members.length === 1) return this.cell(row.members[0], j);
    let sum = 0, count = 0;
    for (const i of row.members) { const v = this.cell(i, j); if (v > 0) { sum += Math.log10(v); count++; } }
    return count ? 10 ** (sum / count) : NaN;
  }

  draw() {
    const started = performance.now();
    const h = this.data.header;
    this.warn(h);
    if (!h.layers) { this.heatmap.height = 0; this.labels.height = 0; return; }
    const rows = this.rows(), cols = this.columns();
    this.currentRows = rows; this.currentCols = cols;
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < h.shape[0]; i++) {
      for (let j = 0; j < h.shape[1]; j++) {
        const v = this.cell(i, j);
        if (v > 0) { const l = Math.log10(v); if (l < lo) lo = l; if (l > hi) hi = l; }
      }
    }
    if (!(hi > lo)) { lo = (lo === Infinity ? -4 : lo) - 1; hi = lo + 2; }
    this.range = [lo, hi];
    const rowH = rows.length > 2000 ? 1 : rows.length > 300 ? 2 : Math.max(3, Math.floor(480 / rows.length));
    const width = Math.max(200, this.scroller.clientWidth - 160);
    this.rowH = rowH;
    const image = new ImageData(cols.length || 1, rows.length);
    const lut = Array.from({length: 256}, (_, k) => viridis(k / 255));
    rows.forEach((row, r) => cols.forEach((j, c) => {
      const v = this.value(row, j), o = (r * image.width + c) * 4;
      const rgb = v > 0 ? lut[Math.round(((Math.log10(v) - lo) / (hi - lo)) * 255)] : v === 0 ? [0, 0, 0] : MISSING;
      image.data[o] = rgb[0]; image.data[o + 1] = rgb[1]; image.data[o + 2] = rgb[2]; image.data[o + 3] = 255;
    }));
    const scratch = el('canvas', {width: image.width, height: image.height});
    scratch.getContext('2d').putImageData(image, 0, 0);
    this.heatmap.width = width; this.heatmap.height = rows.length * rowH;
    const ctx = this.heatmap.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(scratch, 0, 0, width, rows.length * rowH);
    this.drawMarks(ctx, rows, cols, width);
    this.drawLabels(rows);
    this.drawLegend();
    this.drawAxis(cols, width);
    this.heatmap.setAttribute('aria-label', `RWC heatmap: ${rows.length} rows (the list of layers below names them) x ` +
      `${cols.length} columns, steps ${cols.length ? h.first_steps[cols[0]] : '-'} to ${cols.length ? h.last_steps[cols[cols.length - 1]] : '-'}`);
    this.layerSummary.textContent = `${rows.length} ${this.state.collapse ? 'blocks' : 'layers'}, in the order of the rows (names to select or read aloud)`;
    this.listLayers();
    Object.assign(this.heatmap.dataset, {rows: rows.length, columns: cols.length, layers: h.layers.length,
      clusters: h.clusters ? h.clusters.clusters.length : 0, drawMs: (performance.now() - started).toFixed(1)});
    this.drawDecisions(h);
    this.drawClusterLegend(h);
    if (this.selection) this.drawCurves(this.selection);
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

  drawMarks(ctx, rows, cols, width) {
    const h = this.data.header, colW = width / Math.max(cols.length, 1);
    const colOf = (step) => cols.findIndex((j) => h.last_steps[j] >= step);
    for (const mark of [...h.decisions, ...(h.health || [])]) {
      const c = colOf(mark.step);
      if (c < 0) continue;
      const r = rows.findIndex((row) => (mark.kind === 'frozen' ? row.block === mark.name : row.label === mark.name));
      if (r < 0) continue;
      ctx.fillStyle = mark.kind === 'frozen' ? '#ffffff' : mark.kind === 'dead' ? '#ff00ff' : '#ff3030';
      ctx.fillRect(c * colW, r * this.rowH, Math.max(2, colW), Math.max(2, this.rowH));
    }
  }

  drawLabels(rows) {
    const h = this.data.header;
    this.labels.height = rows.length * this.rowH;
    const ctx = this.labels.getContext('2d');
    ctx.font = '11px sans-serif'; ctx.fillStyle = '#333';
    this.blockSpans = [];
    let start = 0;
    for (let r = 1; r <= rows.length; r++) {
      if (r === rows.length || rows[r].block !== rows[start].block || this.state.byCluster) {
        this.blockSpans.push({block: rows[start].block, from: start, to: r});
        const y = start * this.rowH;
        ctx.fillStyle = '#bbb'; ctx.fillRect(0, y, 150, 1); ctx.fillStyle = '#333';
        if ((r - start) * this.rowH >= 9 || this.rowH >= 9) ctx.fillText(rows[start].block || '(no block)', 2, y + 10);
        start = r;
      }
      if (h.clusters && r < rows.length && rows[r].cluster !== undefined) {
        ctx.fillStyle = rows[r].cluster >= 0 ? CLUSTER_COLORS[rows[r].cluster % CLUSTER_COLORS.length] : '#fff';
        ctx.fillRect(144, r * this.rowH, 6, this.rowH); ctx.fillStyle = '#333';
      }
    }
    if (h.clusters && rows.length && rows[0].cluster !== undefined) {
      ctx.fillStyle = rows[0].cluster >= 0 ? CLUSTER_COLORS[rows[0].cluster % CLUSTER_COLORS.length] : '#fff';
      ctx.fillRect(144, 0, 6, this.rowH);
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
    this.legend.setAttribute('aria-label', `Colour scale: RWC from ${low} to ${high}, log scale; grey: missing; black: 0`);
    Object.assign(this.legend.dataset, {low, high});
  }

  drawAxis(cols, width) {
    const h = this.data.header, ctx = this.axis.getContext('2d');
    this.axis.width = width;
    ctx.clearRect(0, 0, width, 30);
    ctx.fillStyle = '#444'; ctx.strokeStyle = '#888'; ctx.font = '10px sans-serif';
    const count = Math.min(cols.length, Math.max(2, Math.floor(width / 110))), colW = width / Math.max(cols.length, 1);
    const ticks = [];
    for (let k = 0; k < count; k++) {
      const c = count > 1 ? Math.round((k * (cols.length - 1)) / (count - 1)) : 0, j = cols[c];
      const x = (c + 0.5) * colW, step = String(h.first_steps[j]), epoch = h.epochs[j];
      const text = epoch >= 0 ? `${step} (epoch ${epoch})` : step;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, 5); ctx.stroke();
      ctx.fillText(text, Math.min(Math.max(x - ctx.measureText(text).width / 2, 0), width - ctx.measureText(text).width), 16);
      ticks.push(text);
    }
    ctx.fillText('step', 0, 28);
    this.axis.dataset.ticks = JSON.stringify(ticks);
    this.axis.setAttribute('aria-label', `Steps: ${ticks.join(', ')}`);
  }

  listLayers() {
    if (!this.layerDetails.open || !this.currentRows) return;
    this.layerList.replaceChildren(...this.currentRows.map((row) => el('li', {},
      el('button', {type: 'button', class: 'rwc-layer-name', onclick: () => this.select({title: row.label, members: row.members})}, row.label))));
  }

  select(selection) {
    this.selection = selection;
    this.drawCurves(selection);
  }

  cellAt(e) {
    const rect = this.heatmap.getBoundingClientRect();
    const r = Math.floor((e.clientY - rect.top) / this.rowH);
    const c = Math.floor(((e.clientX - rect.left) / rect.width) * this.currentCols.length);
    if (r < 0 || r >= this.currentRows.length || c < 0 || c >= this.currentCols.length) return null;
    return {row: this.currentRows[r], j: this.currentCols[c]};
  }

  hover(e) {
    const cell = this.cellAt(e);
    if (!cell) { this.tooltip.style.display = 'none'; return; }
    const h = this.data.header, {row, j} = cell;
    const steps = h.first_steps[j] === h.last_steps[j] ? `${h.first_steps[j]}` : `${h.first_steps[j]}-${h.last_steps[j]}`;
    const epoch = h.epochs[j] >= 0 ? ` | epoch ${h.epochs[j]}` : '';  // unknown epochs are not shown
    const interval = h.intervals ? ` | over ${Number(h.intervals[j].toPrecision(3))} steps` : '';
    const per = this.state.perStep && h.intervals ? ' per step' : '';
    this.tooltip.textContent = `${row.label} | block ${row.block || '-'} | step ${steps}${epoch}${interval} | RWC${per} ${fmt(this.value(row, j))}`;
    Object.assign(this.tooltip.style, {display: 'block', left: `${e.pageX + 12}px`, top: `${e.pageY + 12}px`});
  }

  click(e) {
    const cell = this.cellAt(e);
    if (!cell) return;
    this.selection = {title: cell.row.label, members: cell.row.members};
    this.selectedColumn = cell.j;
    this.drawCurves(this.selection);
    this.drawDepth(cell.j);
  }

  clickLabel(e) {
    const y = e.clientY - this.labels.getBoundingClientRect().top;
    const span = (this.blockSpans || []).find((s) => y >= s.from * this.rowH && y < s.to * this.rowH);
    if (!span) return;
    const members = this.currentRows.slice(span.from, span.to).flatMap((row) => row.members);
    this.select({title: `block ${span.block}`, members});
  }

  zoomTo() {
    const a = Number(this.from.value || -Infinity), b = Number(this.to.value || Infinity);
    this.zoom = a <= b ? [a, b] : null;
    this.draw();
  }

  drawCurves(selection) {
    const h = this.data.header, cols = this.columns();
    const box = {x: 40, y: 8, w: 500, h: 200}, ctx = this.curves.getContext('2d');
    ctx.clearRect(0, 0, 560, 240);
    const [lo, hi] = this.range, x = (c) => box.x + (c / Math.max(cols.length - 1, 1)) * box.w;
    const y = (v) => box.y + box.h - ((Math.log10(v) - lo) / (hi - lo)) * box.h;
    const clusterOf = h.clusters ? h.clusters.labels[h.layers[selection.members[0]]] : undefined;
    const summary = h.clusters && clusterOf >= 0 ? h.clusters.clusters.find((c) => c.cluster_id === clusterOf) : null;
    if (summary && selection.members.length === 1) {  // the cluster's quartile band, on the cluster's own steps
      const at = (step) => cols.findIndex((j) => h.last_steps[j] >= step);
      ctx.fillStyle = 'rgba(0, 114, 178, 0.18)'; ctx.beginPath();
      const points = h.clusters.steps.map((s, k) => [at(s), summary.lower[k], summary.upper[k]]).filter((p) => p[0] >= 0 && p[1] > 0 && p[2] > 0);
      points.forEach(([c, lower], k) => (k ? ctx.lineTo(x(c), y(lower)) : ctx.moveTo(x(c), y(lower))));
      [...points].reverse().forEach(([c, , upper]) => ctx.lineTo(x(c), y(upper)));
      ctx.fill();
    }
    selection.members.slice(0, 200).forEach((i, k) => {
      ctx.strokeStyle = CLUSTER_COLORS[k % CLUSTER_COLORS.length]; ctx.beginPath();
      let started = false;
      cols.forEach((j, c) => {
        const v = this.cell(i, j);
        if (!(v > 0)) { started = false; return; }
        if (started) ctx.lineTo(x(c), y(v)); else { ctx.moveTo(x(c), y(v)); started = true; }
      });
      ctx.stroke();
    });
    logAxes(ctx, box, lo, hi, 'step');
    if (cols.length) {
      ctx.fillText(String(h.first_steps[cols[0]]), box.x, box.y + box.h + 12);
      const last = String(h.last_steps[cols[cols.length - 1]]);
      ctx.fillText(last, box.x + box.w - ctx.measureText(last).width, box.y + box.h + 12);
    }
    const cluster = summary ? `, cluster ${clusterOf} (band: its quartiles)` : '';
    this.curveTitle.textContent = `${selection.title}${selection.members.length > 1 ? ` (${selection.members.length} layers)` : ''}${cluster}`;
    this.curveTitle.id = 'rwc-curve-title';
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

export async function render() {
  document.body.style.cssText = 'font-family: Roboto, sans-serif; margin: 12px; color: #212121';
  document.head.append(el('style', {}, `
    .rwc-panel { margin-bottom: 28px; } .rwc-status { margin: 4px 0; font-size: 13px; }
    .rwc-scroller { max-height: 60vh; overflow-y: auto; border: 1px solid #ddd; }
    .rwc-heatmap { cursor: crosshair; } .rwc-below { display: flex; gap: 24px; flex-wrap: wrap; margin-top: 8px; }
    .rwc-tooltip { position: absolute; background: #212121; color: #fff; padding: 4px 8px; font-size: 12px;
      border-radius: 3px; pointer-events: none; z-index: 10; }
    .rwc-decisions { font-size: 12px; max-height: 220px; overflow-y: auto; }
    .rwc-controls { font-size: 13px; display: flex; align-items: center; gap: 4px; }
    .rwc-cluster-legend { font-size: 12px; margin: 2px 0 6px; }
    .rwc-layers { font-size: 12px; margin: 4px 0; } .rwc-layer-list { max-height: 240px; overflow-y: auto; }
    .rwc-layer-name { border: none; background: none; padding: 0; font: inherit; cursor: pointer; text-align: left; }`));
  const state = {collapse: false, byCluster: false, perStep: false};
  const pickA = el('select', {id: 'rwc-run'}), pickB = el('select', {id: 'rwc-run-b'});
  const message = el('span', {id: 'rwc-message', style: 'margin-left: 12px; font-size: 13px'});
  const clusterNow = el('button', {id: 'rwc-cluster-now'}, 'Cluster now');
  const toggles = [['collapse', 'Collapse blocks'], ['byCluster', 'Order by cluster'], ['perStep', 'Per step']].map(([key, text]) =>
    el('label', {style: 'margin-left: 12px'}, el('input', {type: 'checkbox', id: `rwc-${key}`, onchange: (e) => { state[key] = e.target.checked; panels.forEach((p) => p.data && p.draw()); }}), ` ${text}`));
  const area = el('div', {id: 'rwc-panels'});
  document.body.append(el('div', {}, 'Run ', pickA, ' beside ', pickB, ' ', clusterNow, ...toggles, message), area);
  let panels = [], versions = {};

  const show = () => {
    area.replaceChildren();
    panels = [pickA.value, pickB.value].filter((run, k, all) => run && all.indexOf(run) === k).map((run) => new RunPanel(area, run, state));
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
