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

function drawChart(id, rounds, sets) {
  const canvas = document.getElementById(id);
  const labels = rounds.map((r) => r.round);
  const datasets = sets.map(([label, pick, color]) => ({
    label, data: series(rounds, pick), borderColor: color, backgroundColor: color, spanGaps: true,
  }));
  if (charts[id]) {
    charts[id].data.labels = labels;
    charts[id].data.datasets = datasets;
    charts[id].update();
  } else {
    charts[id] = new Chart(canvas, {
      type: "line", data: { labels, datasets },
      options: { animation: false, scales: { x: { title: { display: true, text: "round" } } } },
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

function figure(image, caption, section) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.addEventListener("load", () => { img.dataset.loaded = "true"; });
  img.src = image.src;
  img.className = "heatmap";
  img.dataset.label = image.label;
  img.dataset.section = section;
  img.alt = caption;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  fig.append(img, text);
  return fig;
}

function describe(image) {
  return `class ${image.label}: predicted ${image.predicted_class} (${(image.probability * 100).toFixed(1)}%), ${image.method}`;
}

function drawGallery() {
  const rounds = Object.keys(data.gallery).sort((a, b) => a - b);
  const round = document.getElementById("round"), client = document.getElementById("client");
  setOptions(round, rounds);
  const clients = Object.keys(data.gallery[round.value] || {}).sort();
  setOptions(client, clients);
  const images = (data.gallery[round.value] || {})[client.value] || [];
  const gallery = document.getElementById("gallery");
  gallery.replaceChildren(...images.map((image) => figure(image, describe(image), "gallery")));
  gallery.dataset.round = round.value;
  gallery.dataset.client = client.value;

  const classes = [...new Set(rounds.flatMap((r) => (data.gallery[r][client.value] || []).map((i) => String(i.label))))];
  const klass = document.getElementById("class");
  setOptions(klass, classes.sort((a, b) => a - b));
  const across = rounds.flatMap((r) =>
    (data.gallery[r][client.value] || []).filter((i) => String(i.label) === klass.value)
      .map((i) => figure(i, `round ${r}: ${describe(i)}`, "compare")));
  document.getElementById("compare").replaceChildren(...across);
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
refresh();
