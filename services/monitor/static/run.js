// A run's page: its facts and settings, curves (overall and per client), the
// comparisons across the federation, the gallery and the logs, from
// /api/tasks/<task>/runs/<run> and, for the pictures on show, its /rounds/<round>
// and /clients/<client>. While the run goes on the data is fetched again every few
// seconds; a run that stopped reporting is marked stale.
"use strict";

const task = document.currentScript.dataset.task;
const run = document.currentScript.dataset.run;
const REFRESH_MS = 5000;
// A client's value is an outlier when it is this many robust standard deviations
// from the other clients' median (the aggregator's flag rule on explanations).
const OUTLIER_Z = 3.5;
const charts = {};
let data = null;
let overlay = null;  // another run's metrics, drawn dashed

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

// One series: a point per round where ``pick`` gives a number.
function line(label, rounds, pick, color, dash, width) {
  const points = rounds.map((r) => ({ x: r.round, y: pick(r) })).filter((p) => isNumber(p.y));
  return { label, points, color, dash, width };
}

function drawChart(id, sets, yTitle) {
  const canvas = document.getElementById(id);
  const datasets = sets.map((s) => ({
    label: s.label, data: s.points, borderColor: s.color, backgroundColor: s.color, spanGaps: true,
    borderDash: s.dash || [], borderWidth: s.width || 2, pointRadius: s.width > 2 ? 3 : 2,
  }));
  if (charts[id]) {
    charts[id].data.datasets = datasets;
    charts[id].options.scales.y.title.text = yTitle;
    charts[id].update();
  } else {
    charts[id] = new Chart(canvas, {
      type: "line", data: { datasets },
      options: {
        animation: false,
        aspectRatio: canvas.closest("figure.wide") ? 3 : 2,
        parsing: false,
        scales: {
          x: { type: "linear", title: { display: true, text: "round" }, ticks: { precision: 0 } },
          // Not pinned to 0: the interesting range (e.g. 88–96%) must not be squashed.
          y: { title: { display: true, text: yTitle } },
        },
      },
    });
  }
  // What the page shows, for people reading the DOM and for the browser test.
  const rounds = new Set(sets.flatMap((s) => s.points.map((p) => p.x)));
  canvas.dataset.points = String(rounds.size);
  canvas.dataset.series = datasets.map((d) => d.label).join(",");
  canvas.dataset.yTitle = yTitle;
}

function median(values) {
  const sorted = values.filter(isNumber).sort((a, b) => a - b);
  if (!sorted.length) return null;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function cell(row, value, digits) {
  const td = row.insertCell();
  td.textContent = value === undefined || value === null ? "–" : (digits ? Number(value).toFixed(digits) : value);
  return td;
}

// Accuracies are shown as percentages everywhere: 95.5%.
function percent(value) {
  return isNumber(value) ? `${(value * 100).toFixed(1)}%` : "–";
}

// `text` shows something else than a value (a class's name for its label).
function setOptions(select, values, text = (v) => v) {
  const keep = select.value;
  select.replaceChildren(...values.map((v) => new Option(text(v), v)));
  if (values.includes(keep)) select.value = keep;
}

// The name a person reads for a label ("Trouser"), from the manifest entry or the
// run's record; null where the name is the label itself (digits).
function nameOf(label, name) {
  const given = name || ((data && data.metrics.class_names) || [])[label];
  return given && given !== String(label) ? given : null;
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

// Where a picture comes from: its key in the store, its manifest entry, the model's checkpoint.
function sources(image) {
  const line = element("p", "sources");
  const key = element("code", "key", image.key || "");
  key.title = "its key in the store";
  line.append(key, " ");
  const link = (text, href, title) => {
    const a = element("a", "", text);
    a.href = href;
    a.title = title;
    return a;
  };
  if (image.manifest) line.append(link("manifest", image.manifest, "the folder's explanations.json"), " ");
  if (image.checkpoint) line.append(link("checkpoint", image.checkpoint, "the global model's safetensors"));
  return line;
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
  const full = element("a", "full-size");
  full.href = image.src;
  full.target = "_blank";
  full.title = "full size";
  full.append(img);
  const text = element("figcaption", "", caption);
  fig.append(full, text);
  fig.append(sources(image));
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
  const predicted = nameOf(image.predicted_class, image.predicted_class_name) ?? image.predicted_class ?? "?";
  const actual = nameOf(image.label, image.class_name) ?? `class ${image.label}`;
  return `${actual}: predicted ${predicted}${probability}${method}`;
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


// The pictures come a round (or a client) at a time, as the controls ask for them,
// and are fetched again after each poll while the run goes on (scores are added late).
const api = `/api/tasks/${encodeURIComponent(task)}/runs/${encodeURIComponent(run)}`;
const pictures = new Map();

function picturesOf(path) {
  if (!pictures.has(path)) {
    pictures.set(path, fetch(`${api}/${path}`).then((response) => response.ok ? response.json() : null));
  }
  return pictures.get(path);
}

const byNumber = (a, b) => a - b;
let galleryDrawn = 0;  // a later draw wins over an earlier one still waiting for its pictures

async function drawGallery() {
  const drawing = ++galleryDrawn;
  const explained = data.explained || {};
  const rounds = Object.keys(explained).filter((r) => explained[r].clients.length).sort(byNumber);
  const round = document.getElementById("round"), client = document.getElementById("client");
  const note = document.getElementById("gallery-note");
  for (const id of ["gallery-controls", "compare-section"]) document.getElementById(id).hidden = !rounds.length;
  note.textContent = rounds.length ? "Click a picture for its full size." : (data.metrics.config || {})["xai-enabled"] === false
    ? "This run trained without explanations: there are no heatmaps."
    : "No heatmaps stored yet: they come after each round's evaluation.";
  setOptions(round, rounds);
  setOptions(client, (explained[round.value] || { clients: [] }).clients);
  const [here, history] = rounds.length
    ? await Promise.all([picturesOf(`rounds/${round.value}`), picturesOf(`clients/${encodeURIComponent(client.value)}`)])
    : [null, null];
  if (drawing !== galleryDrawn) return;
  const images = ((here || {}).gallery || {})[client.value] || [];
  const checksOf = (r) => ((history || {}).quality || {})[r];
  const gallery = document.getElementById("gallery");
  const checks = ((here || {}).quality || {})[client.value];
  gallery.replaceChildren(...images.map((image) => figure(image, describe(image), "gallery", checks)));
  gallery.dataset.round = round.value;
  gallery.dataset.client = client.value;
  describeChecks(checks);

  const seen = (history || {}).gallery || {};
  const classes = [...new Set(Object.values(seen).flatMap((list) => list.map((i) => String(i.label))))];
  const klass = document.getElementById("class");
  setOptions(klass, classes.sort(byNumber), (label) => [label, nameOf(Number(label))].filter(Boolean).join(" "));
  let previous = null;
  const across = Object.keys(seen).sort(byNumber).flatMap((r) =>
    seen[r].filter((i) => String(i.label) === klass.value).map((i) => {
      const fig = figure(i, `round ${r}: ${describe(i)}`, "compare", checksOf(r));
      // The strip means something only if it shows one input: say when it changes.
      if (previous !== null && i.sample_sha256 && previous.sample_sha256 && i.sample_sha256 !== previous.sample_sha256) {
        const mark = element("p", "badges");
        mark.append(element("span", "badge badge-warn", `another sample than round ${previous.round}`));
        fig.append(mark);
        fig.dataset.sampleChanged = "true";
      }
      previous = { round: r, sample_sha256: i.sample_sha256 };
      return fig;
    }));
  document.getElementById("compare").replaceChildren(...across);
}

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
  // Nothing to chart without comparisons: the note says why.
  document.getElementById("federation-details").hidden = !probe && !compared.length;
  const clients = [...new Set(compared.flatMap((r) => Object.keys(r.comparison.clients || {})))].sort();
  const z = (r, client) => largest(((r.comparison.clients || {})[client] || {}).z_score);
  if (compared.length && !compared.some((r) => clients.some((client) => isNumber(z(r, client))))) {
    note.append(element("span", "", "Outliers need 3 clients or more: with fewer, the distances are shown " +
      "beside the probe set's pictures below and nobody is flagged."));
  }
  const threshold = probe && isNumber(probe.flag_threshold) ? probe.flag_threshold : null;
  drawChart("outlier-chart", [
    ...clients.map((client, i) => line(client, compared, (r) => z(r, client), PALETTE[i % PALETTE.length])),
    ...(threshold === null ? [] : [line("flag threshold", compared, () => threshold, "#b71c1c", [6, 4])]),
  ], "largest robust z-score");
  drawChart("drift-chart", [
    line("mean over classes", compared, (r) => mean((r.comparison.global || {}).drift), "#1f77b4"),
    line("largest class", compared, (r) => largest((r.comparison.global || {}).drift), "#d62728"),
  ], "drift (1 − Spearman ρ)");

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
      cell(row, (c.flag_classes || []).map((label) => nameOf(label) ?? label).join(", "));
      cell(row, largest(c.z_score), 1);
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
  return drawProbeGallery();
}

let probeDrawn = 0;

async function drawProbeGallery() {
  const drawing = ++probeDrawn;
  const explained = data.explained || {};
  const round = document.getElementById("probe-round"), model = document.getElementById("probe-model");
  setOptions(round, Object.keys(explained).filter((r) => explained[r].global || explained[r].updates.length).sort(byNumber));
  const listed = explained[round.value] || { global: false, updates: [] };
  setOptions(model, [...(listed.global ? ["global"] : []), ...listed.updates.map((c) => `update ${c}`)]);
  const here = round.value ? ((await picturesOf(`rounds/${round.value}`)) || {}).probe || {} : {};
  if (drawing !== probeDrawn) return;
  const client = model.value.startsWith("update ") ? model.value.slice(7) : null;
  const images = (client === null ? here.global : (here.updates || {})[client]) || [];
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


// The run's facts, its state (with why a failed run failed) and its settings.
function drawOverview() {
  const m = data.metrics, s = data.summary;
  const status = document.getElementById("status");
  status.textContent = `${s.state} · ${s.rounds}/${s.num_rounds} rounds`;
  status.className = `status-${s.state}`;
  const note = document.getElementById("state-note");
  note.replaceChildren();
  // A run that stopped after a round it recorded can be continued from there.
  const resume = s.rounds > 0 ? ` \`fedxai run --resume ${run}\` continues it after round ${s.rounds}.` : "";
  if (s.state === "failed") {
    note.append(element("span", "fails",
      `The run failed: ${s.reason || "no reason recorded"}. The logs below say more.${resume}`));
  } else if (s.state === "stale") {
    note.append(element("span", "fails", `No update since ${s.updated_at}: the aggregator stopped reporting ` +
      `without finishing the run. This page no longer refreshes.${resume}`));
  }
  const facts = document.getElementById("facts");
  facts.replaceChildren();
  const clients = new Set((m.rounds || []).flatMap((r) => Object.keys(r.clients || {})));
  const config = m.config || {};
  for (const [term, value] of [
    ["started", (s.started_at || "").replace("T", " ").replace("+00:00", " UTC")],
    ["duration", s.duration],
    ["seconds per round", s.seconds_per_round === null ? "–" : `${s.seconds_per_round.toFixed(1)} s (median)`],
    ["clients", String(clients.size)],
    // Runs recorded before datasets had names learnt MNIST.
    ["model", `${config.architecture || "?"} on ${config.dataset || "mnist"}`],
    ["global accuracy", `${percent(s.accuracy)} (before training ${percent(((m.rounds || [])[0] || { global: {} }).global.accuracy)})`],
    ["explanations", config["xai-enabled"] === false ? "off" : `${config["cam-method"] || "?"}, ${config["samples-per-class"] || "?"} samples per class`],
    ...(m.resumed || []).map((r) => ["continued", `after round ${r.after_round}, ${(r.at || "").replace("T", " ").replace("+00:00", " UTC")}`]),
  ]) {
    facts.append(element("dt", "", term), element("dd", "", value));
  }
  const body = document.querySelector("#settings tbody");
  body.replaceChildren();
  for (const key of Object.keys(config).sort()) {
    const row = body.insertRow();
    cell(row, key);
    cell(row, JSON.stringify(config[key]));
  }
}

async function loadRuns() {
  const response = await fetch(`/api/tasks/${encodeURIComponent(task)}/runs`);
  if (!response.ok) return;
  const runs = await response.json();
  const select = document.getElementById("run-select");
  select.replaceChildren(...runs.map((r) => new Option(`${r.run} (${r.state})`, r.run)));
  select.value = run;
  const others = document.getElementById("overlay");
  others.replaceChildren(new Option("none", ""), ...runs.filter((r) => r.run !== run).map((r) => new Option(r.run, r.run)));
  // ?overlay=<run> opens the page with that run's curves drawn over (a link to share).
  const wanted = new URLSearchParams(window.location.search).get("overlay");
  if (wanted && runs.some((r) => r.run === wanted && r.run !== run)) {
    others.value = wanted;
    await chooseOverlay();
  }
}

async function chooseOverlay() {
  const other = document.getElementById("overlay").value;
  const address = new URL(window.location.href);
  if (other) address.searchParams.set("overlay", other); else address.searchParams.delete("overlay");
  window.history.replaceState(null, "", address);
  overlay = null;
  if (other) {
    const response = await fetch(`/api/tasks/${encodeURIComponent(task)}/runs/${encodeURIComponent(other)}/metrics`);
    if (response.ok) overlay = { run: other, metrics: await response.json() };
  }
  drawCurves();
}

// From round 1: the untrained model's 10% would squash the range that matters (it is in the overview).
function drawCurves() {
  const trained = (metrics) => (metrics.rounds || []).filter((r) => r.round > 0);
  const rounds = trained(data.metrics);
  const accuracy = (r) => r.global && isNumber(r.global.accuracy) ? r.global.accuracy * 100 : null;
  const federated = (r) => r.evaluate && isNumber(r.evaluate["eval-accuracy"]) ? r.evaluate["eval-accuracy"] * 100 : null;
  const loss = (r) => r.global && r.global.loss;
  const federatedLoss = (r) => r.evaluate && r.evaluate["eval-loss"];
  const accuracySets = [line("global", rounds, accuracy, "#1f77b4"), line("clients (mean)", rounds, federated, "#ff7f0e")];
  const lossSets = [line("global", rounds, loss, "#1f77b4"), line("clients (mean)", rounds, federatedLoss, "#ff7f0e")];
  if (overlay) {
    const other = trained(overlay.metrics);
    accuracySets.push(line(`global, run ${overlay.run}`, other, accuracy, "#1f77b4", [6, 4]),
      line(`clients, run ${overlay.run}`, other, federated, "#ff7f0e", [6, 4]));
    lossSets.push(line(`global, run ${overlay.run}`, other, loss, "#1f77b4", [6, 4]),
      line(`clients, run ${overlay.run}`, other, federatedLoss, "#ff7f0e", [6, 4]));
  }
  drawChart("accuracy-chart", accuracySets, "accuracy (%)");
  drawChart("loss-chart", lossSets, "loss (cross-entropy)");
}

// Per-client figures of a round: metrics from the clients' replies, and the mean
// explanation distance from the aggregator's comparison.
const CLIENT_METRICS = {
  "eval-accuracy": { title: "evaluation accuracy (%)", pick: (c) => c.evaluate && c.evaluate["eval-accuracy"], scale: 100, low: true },
  "eval-loss": { title: "evaluation loss (cross-entropy)", pick: (c) => c.evaluate && c.evaluate["eval-loss"], scale: 1, low: false },
  "train-accuracy": { title: "training accuracy (%)", pick: (c) => c.train && c.train["train-accuracy"], scale: 100, low: true },
  "train-loss": { title: "training loss (cross-entropy)", pick: (c) => c.train && c.train["train-loss"], scale: 1, low: false },
  distance: { title: "explanation distance to the other clients (1 − ρ, mean over classes)", pick: null, scale: 1, low: false },
};

function clientValue(r, client, metric) {
  const spec = CLIENT_METRICS[metric];
  if (spec.pick === null) {
    const figures = ((r.comparison || {}).clients || {})[client];
    return figures ? mean(figures.distance_to_clients) : null;
  }
  const value = spec.pick((r.clients || {})[client] || {});
  return isNumber(value) ? value * spec.scale : null;
}

// Clients whose value lies OUTLIER_Z robust standard deviations on the bad side
// of the others' median (low accuracy, high loss or distance).
function outliers(r, clients, metric) {
  const spec = CLIENT_METRICS[metric];
  const found = [];
  for (const client of clients) {
    const value = clientValue(r, client, metric);
    const others = clients.filter((c) => c !== client).map((c) => clientValue(r, c, metric)).filter(isNumber);
    if (!isNumber(value) || others.length < 2) continue;
    const mid = median(others);
    const spread = 1.4826 * median(others.map((v) => Math.abs(v - mid)));
    const floor = spec.scale === 100 ? 2 : 0.05 * Math.max(Math.abs(mid), 0.1);  // 2 points of accuracy
    const z = (value - mid) / Math.max(spread, floor);
    if (spec.low ? z < -OUTLIER_Z : z > OUTLIER_Z) found.push({ client, value, mid });
  }
  return found;
}

// "round 3", "rounds 1–50", "rounds 3, 5–7".
function roundRanges(numbers) {
  const parts = [];
  for (const n of numbers) {
    const last = parts[parts.length - 1];
    if (last && n === last[1] + 1) last[1] = n; else parts.push([n, n]);
  }
  const text = parts.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ");
  return numbers.length === 1 ? `round ${text}` : `rounds ${text}`;
}

function allClients(rounds) {
  return [...new Set(rounds.flatMap((r) => [
    ...Object.keys(r.clients || {}), ...Object.keys((r.comparison || {}).clients || {}),
  ]))].sort();
}

// When every node trains and evaluates every round, a round's evaluation comes with the
// next round's training: while the run goes on, the latest round may not have it yet.
function awaitingEvaluation(r, rounds) {
  return data.summary.state === "running" && !r.evaluate && r === rounds[rounds.length - 1];
}

// Clients seen in the run that sent no evaluation in round r (none while it is to come).
function missing(r, rounds, clients) {
  if (awaitingEvaluation(r, rounds)) return [];
  return clients.filter((c) => !(((r.clients || {})[c] || {}).evaluate));
}

function drawClients() {
  const rounds = (data.metrics.rounds || []).filter((r) => r.round > 0);
  const clients = allClients(rounds);
  const metric = document.getElementById("client-metric").value;
  const spec = CLIENT_METRICS[metric];
  // Each round's outliers, found once: the chart and the alerts both use them.
  const found = new Map(rounds.map((r) => [r.round, outliers(r, clients, metric)]));
  const flagged = new Set([...found.values()].flatMap((list) => list.map((o) => o.client)));
  drawChart("client-chart", clients.map((client, i) => line(
    flagged.has(client) ? `${client} (outlier)` : client, rounds, (r) => clientValue(r, client, metric),
    flagged.has(client) ? "#c62828" : PALETTE[i % PALETTE.length], flagged.has(client) ? [] : [3, 3],
    flagged.has(client) ? 4 : 1.5,
  )), spec.title);
  document.getElementById("client-chart-caption").textContent =
    `${spec.title} of each client per round; outliers drawn thick in red`;

  // One line per client, however many rounds: 50 rounds of one outlier stay one line.
  const alerts = document.getElementById("client-alerts");
  alerts.replaceChildren();
  const format = (v) => spec.scale === 100 ? `${v.toFixed(1)}%` : v.toFixed(3);
  const outlying = new Map(), silent = new Map(), failures = new Map();
  for (const r of rounds) {
    for (const o of found.get(r.round)) {
      outlying.set(o.client, [...(outlying.get(o.client) || []), { round: r.round, ...o }]);
    }
    for (const client of missing(r, rounds, clients)) silent.set(client, [...(silent.get(client) || []), r.round]);
    for (const client of clients) {
      for (const [stage, error] of Object.entries((((r.clients || {})[client] || {}).failed) || {})) {
        const key = `${client} ${stage}`;
        failures.set(key, [...(failures.get(key) || []), { client, stage, error, round: r.round }]);
      }
    }
  }
  for (const client of clients) {
    const found = outlying.get(client);
    if (found) {
      const last = found[found.length - 1];
      alerts.append(element("span", "fails", `${client}: an outlier in ${roundRanges(found.map((o) => o.round))}; ` +
        `in round ${last.round} at ${format(last.value)} against the other clients' median ${format(last.mid)}.`));
    }
    if (silent.has(client)) {
      alerts.append(element("span", "fails", `${client}: no evaluation in ${roundRanges(silent.get(client))}.`));
    }
    for (const stage of ["train", "evaluate"]) {
      const failed = failures.get(`${client} ${stage}`);
      if (!failed) continue;
      const last = failed[failed.length - 1];
      alerts.append(element("span", "fails", `${client}: did not ${stage} in ` +
        `${roundRanges(failed.map((f) => f.round))}; in round ${last.round}: ${last.error}`));
    }
  }
  if (!alerts.children.length && clients.length) {
    alerts.append(element("span", "", `No outlier (${OUTLIER_Z} robust standard deviations from the other clients' ` +
      "median) and no missing reply in any round."));
  }

  const select = document.getElementById("clients-round");
  const numbers = rounds.map((r) => String(r.round));
  const latest = select.value === "" || select.dataset.followLatest !== "false";
  setOptions(select, numbers);
  if (latest && numbers.length) select.value = numbers[numbers.length - 1];
  const r = rounds.find((entry) => String(entry.round) === select.value);
  const body = document.querySelector("#clients-table tbody");
  body.replaceChildren();
  if (!r) return;
  const low = new Set(outliers(r, clients, "eval-accuracy").map((o) => o.client));
  const absent = new Set(missing(r, rounds, clients));
  const awaiting = awaitingEvaluation(r, rounds);
  for (const client of clients) {
    const m = (r.clients || {})[client] || {};
    const t = m.train || {}, e = m.evaluate || {};
    const row = body.insertRow();
    row.dataset.client = client;
    cell(row, client);
    cell(row, percent(e["eval-accuracy"])); cell(row, e["eval-loss"], 3);
    cell(row, percent(t["train-accuracy"])); cell(row, t["train-loss"], 3);
    cell(row, e["num-examples"]); cell(row, e["xai-stored"]); cell(row, e["xai-queued"]);
    const notes = [];
    if (low.has(client)) notes.push("accuracy outlier");
    if (absent.has(client)) notes.push("no evaluation reply");
    for (const [stage, error] of Object.entries(m.failed || {})) notes.push(`did not ${stage}: ${error}`);
    if (notes.length) row.className = "flagged";
    if (awaiting && !m.evaluate) notes.push("its evaluation comes with the next round's training");
    // With fraction-explain below 1, a client that sent, stored, queued and had refused nothing was not drawn.
    const explaining = r.explaining || {};
    const explained = ["xai-sent", "xai-stored", "xai-queued", "xai-rejected"].some((key) => e[key]);
    if (explaining.clients < explaining.of && m.evaluate && !explained) {
      notes.push(`not drawn to explain this round (${explaining.clients} of ${explaining.of} were)`);
    }
    cell(row, notes.join(", ") || "");
  }
}

function drawLogs() {
  const list = document.getElementById("log-list");
  list.replaceChildren();
  for (const service of data.logs || []) {
    const item = document.createElement("li");
    const a = element("a", "", `${service}.log`);
    a.href = `/logs/${encodeURIComponent(task)}/${encodeURIComponent(run)}/${encodeURIComponent(service)}`;
    item.append(a);
    list.append(item);
  }
  if (!list.children.length) {
    list.append(element("li", "", data.summary.state === "running"
      ? "The logs are kept in the store when the run ends." : "No logs were kept for this run."));
  }
}

async function render() {
  drawOverview();
  drawCurves();
  drawClients();
  const galleries = [drawGallery(), drawFederation((data.metrics.rounds || []).filter((r) => r.round > 0))];
  drawLogs();
  await Promise.all(galleries);
}

async function refresh() {
  const response = await fetch(api);
  if (!response.ok) return;
  data = await response.json();
  pictures.clear();
  await render();
  document.body.dataset.loaded = "true";
  if (data.summary.state === "running") setTimeout(refresh, REFRESH_MS);
}

for (const id of ["round", "client", "class"]) {
  document.getElementById(id).addEventListener("change", drawGallery);
}
for (const id of ["probe-round", "probe-model"]) {
  document.getElementById(id).addEventListener("change", drawProbeGallery);
}
document.getElementById("client-metric").addEventListener("change", drawClients);
document.getElementById("clients-round").addEventListener("change", (event) => {
  const select = event.target;
  select.dataset.followLatest = String(select.value === select.options[select.options.length - 1].value);
  drawClients();
});
document.getElementById("overlay").addEventListener("change", chooseOverlay);
document.getElementById("run-select").addEventListener("change", (event) => {
  window.location.href = `/tasks/${encodeURIComponent(task)}/runs/${encodeURIComponent(event.target.value)}`;
});
refresh().then(loadRuns);
