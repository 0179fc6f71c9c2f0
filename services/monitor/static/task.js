// The task page: charts, the clients table and the gallery, from /api/tasks/<task>.
// While the run is going the data is fetched again every few seconds.
"use strict";

const task = document.currentScript.dataset.task;
const REFRESH_MS = 5000;
const charts = {};
let data = null;

function series(rounds, pick) {
  return rounds.map((r) => { const v = pick(r); return v === undefined ? null : v; });
}

function drawChart(id, rounds, sets, yTitle) {
  const canvas = document.getElementById(id);
  const labels = rounds.map((r) => r.round);
  const datasets = sets.map(([label, pick, color, dash]) => ({
    label, data: series(rounds, pick), borderColor: color, backgroundColor: color, spanGaps: true,
    borderDash: dash || [],
  }));
  if (charts[id]) {
    charts[id].data.labels = labels;
    charts[id].data.datasets = datasets;
    charts[id].update();
  } else {
    charts[id] = new Chart(canvas, {
      type: "line", data: { labels, datasets },
      options: {
        animation: false,
        scales: {
          x: { title: { display: true, text: "round" } },
          ...(yTitle ? { y: { title: { display: true, text: yTitle } } } : {}),
        },
      },
    });
  }
  // What the page shows, for people reading the DOM and for the browser test.
  canvas.dataset.points = String(labels.length);
  canvas.dataset.series = datasets.map((d) => d.label).join(",");
}

function cell(row, value, digits) {
  const td = row.insertCell();
  td.textContent = value === undefined || value === null ? "–" : (digits ? Number(value).toFixed(digits) : value);
}

function drawClients(rounds) {
  const body = document.querySelector("#clients tbody");
  body.replaceChildren();
  for (const r of rounds) {
    for (const [client, m] of Object.entries(r.clients || {}).sort()) {
      const row = body.insertRow();
      const t = m.train || {}, e = m.evaluate || {};
      cell(row, r.round); cell(row, client);
      cell(row, t["train-loss"], 3); cell(row, t["train-accuracy"], 3);
      cell(row, e["eval-loss"], 3); cell(row, e["eval-accuracy"], 3);
      cell(row, e["num-examples"]); cell(row, e["xai-stored"]); cell(row, e["xai-queued"]);
    }
  }
}

function setOptions(select, values) {
  const keep = select.value;
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  if (values.includes(keep)) select.value = keep;
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function signed(value) {
  return `${value < 0 ? "−" : "+"}${Math.abs(value).toFixed(2)}`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A map's peak, raw: weak ones are tiny (0.0012, 3.4e-7).
function peak(value) {
  return String(Number(value.toPrecision(2)));
}

function isWrong(image) {
  return isNumber(image.label) && isNumber(image.predicted_class) && image.predicted_class !== image.label;
}

function drawnScore(image) {
  return (image.faithfulness || []).find((score) => score.method === image.method);
}

// The plain statements next to a picture; kind "warn" for what makes the map untrustworthy.
function badges(image) {
  const found = [];
  if (isWrong(image)) found.push(["wrong prediction", "wrong"]);
  if (image.degenerate === true) found.push(["no evidence (all-zero map)", "warn"]);
  else if (image.weak === true) {
    found.push([isNumber(image.cam_max) ? `weak: peak ${peak(image.cam_max)}` : "weak", "warn"]);
  }
  if (image.sanity_passed === false) {
    const rho = isNumber(image.sanity_spearman) ? ` (ρ = ${image.sanity_spearman.toFixed(2)})` : "";
    found.push([`fails sanity check${rho}`, "warn"]);
  }
  const score = drawnScore(image);
  const gap = score && isNumber(score.gap) ? score.gap : image.selection && image.selection.gap;
  // A map that ranks pixels no better than chance misleads: warn, as its caption does.
  if (isNumber(gap) && gap <= 0) found.push([`deletion gap ${signed(gap)}, no better than random`, "warn"]);
  else if (isNumber(gap)) found.push([`deletion gap ${signed(gap)}`, "info"]);
  return found.map(([text, kind]) => element("span", `badge badge-${kind}`, text));
}

// Why the automatic choice drew this method.
function selection(image) {
  const s = image.selection;
  if (!s || typeof s.method !== "string") return null;
  let text = `auto chose ${s.method}`;
  if (isNumber(s.gap)) text += ` (gap ${signed(s.gap)})`;
  if (typeof s.runner_up === "string" && isNumber(s.margin)) {
    text += `, ${signed(s.margin)} over ${s.runner_up}`;
  } else if (s.runner_up === null) {
    text += ", the only usable method";
  }
  if (isNumber(s.grad_cam_gap) && s.method !== "Grad-CAM" && s.runner_up !== "Grad-CAM") {
    text += `; Grad-CAM ${signed(s.grad_cam_gap)}`;
  }
  const line = element("p", "selection", text);
  if (typeof s.rule === "string") line.title = s.rule;
  if (s.passed_sanity === false) {
    line.append(" ", element("span", "badge badge-warn", "no method passed the sanity check"));
  }
  return line;
}

function sanityOf(checks, method) {
  const methods = checks && checks.sanity && checks.sanity.methods;
  const entry = methods && methods[method];
  if (!entry) return null;
  const steps = Array.isArray(entry.spearman) ? entry.spearman.filter(isNumber) : [];
  return { rho: steps.length ? steps[steps.length - 1] : null, passed: entry.passed };
}

// Every method's deletion scores on this sample; the drawn one is marked.
function scores(image, checks) {
  const rows = (image.faithfulness || []).filter((score) => typeof score.method === "string");
  if (!rows.length) return null;
  const withSanity = rows.some((score) => sanityOf(checks, score.method));
  const table = element("table", "scores");
  const head = table.createTHead().insertRow();
  for (const name of ["method", "deletion gap", ...(withSanity ? ["sanity ρ"] : [])]) {
    head.append(element("th", "", name));
  }
  const body = table.createTBody();
  const auc = (value) => (isNumber(value) ? value.toFixed(2) : "–");
  for (const score of rows) {
    const row = body.insertRow();
    row.dataset.method = score.method;
    if (score.method === image.method) row.className = "drawn";
    row.insertCell().textContent = score.method + (score.method === image.method ? " ◂" : "");
    const gap = row.insertCell();
    const blank = score.degenerate === true ? " blank map" : "";
    gap.textContent = (isNumber(score.gap) ? signed(score.gap) : "–") + blank;
    gap.title = `MoRF AUC ${auc(score.morf_auc)}, LeRF AUC ${auc(score.lerf_auc)}`;
    if (withSanity) {
      const sanity = sanityOf(checks, score.method);
      const failed = sanity !== null && sanity.passed === false;
      const cell = row.insertCell();
      cell.textContent = sanity && isNumber(sanity.rho) ? sanity.rho.toFixed(2) + (failed ? " fails" : "") : "–";
      if (failed) cell.className = "fails";
    }
  }
  return table;
}

function figure(image, caption, section, checks) {
  const fig = document.createElement("figure");
  fig.dataset.label = image.label;
  fig.dataset.section = section;
  const img = document.createElement("img");
  img.addEventListener("load", () => { img.dataset.loaded = "true"; });
  img.src = image.src;
  img.className = isWrong(image) ? "heatmap wrong" : "heatmap";
  img.dataset.label = image.label;
  img.dataset.section = section;
  img.alt = caption;
  const text = element("figcaption", "", caption);
  fig.append(img, text);
  const marks = badges(image);
  if (marks.length) {
    const line = element("p", "badges");
    line.append(...marks);
    fig.append(line);
  }
  for (const part of [selection(image), scores(image, checks)]) {
    if (part) fig.append(part);
  }
  return fig;
}

function describe(image) {
  const probability = isNumber(image.probability) ? ` (${(image.probability * 100).toFixed(1)}%)` : "";
  const method = typeof image.method === "string" ? `, ${image.method}` : "";
  return `class ${image.label}: predicted ${image.predicted_class ?? "?"}${probability}${method}`;
}

// What the scores of one call mean: how removed pixels were filled, and which
// methods' maps survive randomising the model.
function describeChecks(checks) {
  const note = document.getElementById("checks");
  note.replaceChildren();
  if (!checks) return;
  if (typeof checks.replacement === "string") {
    note.append(element("span", "", "Deletion gap: LeRF − MoRF AUC, the areas under the class's probability as the " +
      "least or the most relevant pixels of the map are removed first, filled by " +
      `${checks.replacement}. Higher is more faithful; about 0 for a random map.`));
  }
  const sanity = checks.sanity;
  if (!sanity || !sanity.methods) return;
  const layers = Array.isArray(sanity.randomised_layers) ? ` (${sanity.randomised_layers.join(", ")})` : "";
  const samples = isNumber(sanity.samples) ? ` on ${sanity.samples} samples` : "";
  const threshold = isNumber(sanity.threshold) ? `ρ ≥ ${sanity.threshold}` : "a high ρ";
  const line = element("span", "", "Sanity check: rank correlation ρ of each method's maps before and after " +
    `randomising the model${layers}${samples}; a method fails at ${threshold}: `);
  Object.keys(sanity.methods).forEach((method, index) => {
    const s = sanityOf(checks, method);
    const failed = s !== null && s.passed === false;
    const rho = s && isNumber(s.rho) ? ` ρ = ${s.rho.toFixed(2)}` : "";
    if (index) line.append(" · ");
    line.append(element("span", failed ? "fails" : "", `${method}${rho}${failed ? " fails" : ""}`));
  });
  note.append(line);
}

function drawGallery() {
  const rounds = Object.keys(data.gallery).sort((a, b) => a - b);
  const round = document.getElementById("round"), client = document.getElementById("client");
  setOptions(round, rounds);
  const clients = Object.keys(data.gallery[round.value] || {}).sort();
  setOptions(client, clients);
  const quality = data.quality || {};
  const checksOf = (r) => (quality[r] || {})[client.value];
  const images = (data.gallery[round.value] || {})[client.value] || [];
  const gallery = document.getElementById("gallery");
  const checks = checksOf(round.value);
  gallery.replaceChildren(...images.map((image) => figure(image, describe(image), "gallery", checks)));
  gallery.dataset.round = round.value;
  gallery.dataset.client = client.value;
  describeChecks(checks);

  const classes = [...new Set(rounds.flatMap((r) => (data.gallery[r][client.value] || []).map((i) => String(i.label))))];
  const klass = document.getElementById("class");
  setOptions(klass, classes.sort((a, b) => a - b));
  const across = rounds.flatMap((r) =>
    (data.gallery[r][client.value] || []).filter((i) => String(i.label) === klass.value)
      .map((i) => figure(i, `round ${r}: ${describe(i)}`, "compare", checksOf(r))));
  document.getElementById("compare").replaceChildren(...across);
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function mean(values) {
  const numbers = Object.values(values || {}).filter(isNumber);
  return numbers.length ? numbers.reduce((a, b) => a + b, 0) / numbers.length : null;
}

function largest(values) {
  const numbers = Object.values(values || {}).filter(isNumber);
  return numbers.length ? Math.max(...numbers) : null;
}

// The aggregator's comparisons: outlier scores per client, the global model's drift, the flags.
function drawFederation(rounds) {
  const compared = rounds.filter((r) => r.comparison);
  const probe = data.metrics.probe;
  const note = document.getElementById("probe-note");
  note.replaceChildren();
  if (probe) {
    note.append(element("span", "", `Probe set: ${probe.images} images (${probe.per_class} per class) from ` +
      `${probe.source}, explained with ${probe.method}. Distance between two maps of an image: ${probe.distance}. ` +
      `A client is flagged when one class's distance to the other clients' median map has a robust z-score above ` +
      `${probe.flag_threshold}` + (probe.exclude_flagged ? "; flagged updates are left out of the average." : ".")));
    if (probe.queued) note.append(element("span", "fails", `${probe.queued} probe explanation requests still queued.`));
  } else {
    note.append(element("span", "", "This run did not explain the global model and the updates on a probe set."));
  }
  const clients = [...new Set(compared.flatMap((r) => Object.keys(r.comparison.clients || {})))].sort();
  const z = (r, client) => largest(((r.comparison.clients || {})[client] || {}).z_score);
  if (compared.length && !compared.some((r) => clients.some((client) => isNumber(z(r, client))))) {
    note.append(element("span", "", "Outliers need 3 clients or more: with fewer, the distances are shown " +
      "beside the probe set's pictures below and nobody is flagged."));
  }
  const threshold = probe && isNumber(probe.flag_threshold) ? probe.flag_threshold : null;
  drawChart("outlier-chart", compared, [
    ...clients.map((client, i) => [client, (r) => z(r, client), PALETTE[i % PALETTE.length]]),
    ...(threshold === null ? [] : [["flag threshold", () => threshold, "#b71c1c", [6, 4]]]),
  ], "largest robust z-score");
  drawChart("drift-chart", compared, [
    ["mean over classes", (r) => mean((r.comparison.global || {}).drift), "#1f77b4"],
    ["largest class", (r) => largest((r.comparison.global || {}).drift), "#d62728"],
  ], "1 − Spearman ρ");

  const body = document.querySelector("#flags tbody");
  body.replaceChildren();
  for (const r of compared) {
    const weights = r.comparison.weights || {};
    for (const [client, c] of Object.entries(r.comparison.clients || {}).sort()) {
      const w = weights[client] || {};
      if (!c.flagged && !w.flagged) continue;  // the table lists flags only
      const row = body.insertRow();
      row.className = c.flagged ? "flagged" : "";
      cell(row, r.round); cell(row, client); cell(row, c.flagged ? "yes" : "no");
      cell(row, (c.flag_classes || []).join(", ")); cell(row, largest(c.z_score), 1);
      cell(row, mean(c.distance_to_clients), 3); cell(row, mean(c.distance_to_global), 3);
      cell(row, isNumber(w.z_score) ? `${w.z_score.toFixed(1)}${w.flagged ? " flagged" : ""}` : null);
      cell(row, (r.excluded || []).includes(client) ? "left out" : "yes");
    }
  }
  if (!body.rows.length) {
    const row = body.insertRow();
    const td = row.insertCell();
    td.colSpan = 9;
    td.textContent = compared.length ? "No client flagged in any round." : "No comparisons yet.";
  }
  drawProbeGallery();
}

function drawProbeGallery() {
  const probe = data.probe || {};
  const round = document.getElementById("probe-round"), model = document.getElementById("probe-model");
  setOptions(round, Object.keys(probe).sort((a, b) => a - b));
  const here = probe[round.value] || { updates: {} };
  const models = [...(here.global ? ["global"] : []), ...Object.keys(here.updates || {}).sort().map((c) => `update ${c}`)];
  setOptions(model, models);
  const client = model.value.startsWith("update ") ? model.value.slice(7) : null;
  const images = client === null ? here.global || [] : here.updates[client] || [];
  const entry = (data.metrics.rounds || []).find((r) => String(r.round) === round.value);
  const comparison = (entry && entry.comparison) || {};
  const figures = client === null ? comparison.global || {} : (comparison.clients || {})[client] || {};
  const gallery = document.getElementById("probe-gallery");
  gallery.replaceChildren(...images.map((image) => {
    const fig = figure(image, describe(image), "probe", null);
    const label = String(image.label);
    const parts = [];
    for (const [name, key] of [["drift", "drift"], ["to clients", "distance_to_clients"], ["to global", "distance_to_global"]]) {
      const value = (figures[key] || {})[label];
      if (isNumber(value)) parts.push(`${name} ${value.toFixed(2)}`);
    }
    const zscore = (figures.z_score || {})[label];
    if (isNumber(zscore)) parts.push(`z ${zscore.toFixed(1)}`);
    if (parts.length) {
      const flagged = (figures.flag_classes || []).map(String).includes(label);
      fig.append(element("p", flagged ? "comparison fails" : "comparison", parts.join(" · ") + (flagged ? " · drives the flag" : "")));
    }
    return fig;
  }));
  gallery.dataset.round = round.value;
  gallery.dataset.model = model.value;
}

function render() {
  const rounds = (data.metrics.rounds || []);
  const status = document.getElementById("status");
  status.textContent = `${data.metrics.status} · ${rounds.filter((r) => r.round > 0).length}/${data.metrics.num_rounds} rounds`;
  status.className = `status-${data.metrics.status}`;
  drawChart("accuracy-chart", rounds, [
    ["global (server)", (r) => r.global && r.global.accuracy, "#1f77b4"],
    ["federated (clients)", (r) => r.evaluate && r.evaluate["eval-accuracy"], "#ff7f0e"],
  ]);
  drawChart("loss-chart", rounds, [
    ["global (server)", (r) => r.global && r.global.loss, "#1f77b4"],
    ["federated (clients)", (r) => r.evaluate && r.evaluate["eval-loss"], "#ff7f0e"],
  ]);
  drawClients(rounds.filter((r) => r.round > 0));
  drawFederation(rounds.filter((r) => r.round > 0));
  drawGallery();
}

async function refresh() {
  const response = await fetch(`/api/tasks/${encodeURIComponent(task)}`);
  if (!response.ok) return;
  data = await response.json();
  render();
  document.body.dataset.loaded = "true";
  if (data.metrics.status === "running") setTimeout(refresh, REFRESH_MS);
}

for (const id of ["round", "client", "class"]) {
  document.getElementById(id).addEventListener("change", drawGallery);
}
for (const id of ["probe-round", "probe-model"]) {
  document.getElementById(id).addEventListener("change", drawProbeGallery);
}
refresh();
