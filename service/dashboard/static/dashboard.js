// Keep the dashboard live: poll each [data-poll] element's JSON endpoint and fill its
// data-bind / data-attr-* / data-show / data-list markup; draw the throughput chart.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function get(data, path) {
  return path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), data);
}

function text(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

function pattern(template, data) {
  return template.replace(/\{([\w.]+)\}/g, (_, path) => text(get(data, path)));
}

function truthy(data, path) {
  const negate = path.startsWith("!");
  const value = get(data, negate ? path.slice(1) : path);
  const on = Array.isArray(value) ? value.length > 0 : Boolean(value);
  return negate ? !on : on;
}

// Fill one element from `data`: its text, its templated attributes and whether it shows.
function bindOne(el, data) {
  if (el.dataset.bind) el.textContent = text(get(data, el.dataset.bind));
  if (el.dataset.show) el.hidden = !truthy(data, el.dataset.show);
  for (const [key, template] of Object.entries(el.dataset)) {
    if (key.startsWith("attr")) el.setAttribute(key.slice(4).toLowerCase(), pattern(template, data));
  }
}

function fillRow(row, item) {
  for (const el of [row, ...row.querySelectorAll("*")]) bindOne(el, item);
}

// Rebuild a list from its <template>, unless nothing changed or the keyboard is inside it.
function fillList(list, items) {
  const snapshot = JSON.stringify(items);
  if (list.dataset.snapshot === snapshot || list.contains(document.activeElement)) return;
  list.dataset.snapshot = snapshot;
  const template = list.querySelector(":scope > template");
  list.querySelectorAll(":scope > [data-row]").forEach((row) => row.remove());
  for (const item of items) {
    const fragment = template.content.cloneNode(true);
    fragment.querySelectorAll("[data-row]").forEach((row) => fillRow(row, item));
    list.append(fragment);
  }
}

function fill(root, data) {
  for (const list of root.querySelectorAll("[data-list]")) fillList(list, get(data, list.dataset.list) || []);
  for (const el of root.querySelectorAll("[data-empty]")) el.hidden = truthy(data, el.dataset.empty);
  const outsideRows = (el) => !el.closest("[data-row]") && !el.closest("template");
  for (const el of root.querySelectorAll("[data-bind], [data-show], [data-attr-class], [data-attr-value]")) {
    if (outsideRows(el)) bindOne(el, data);
  }
}

function element(name, attributes, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
  parent.append(el);
  return el;
}

// Draw one line per series over the last hour's minutes, with a scale and time labels.
function drawChart(svg, data) {
  const width = 640, height = 220, left = 40, bottom = 24, top = 10;
  const series = ["submitted", "completed", "failed"];
  const peak = Math.max(1, ...series.flatMap((name) => data[name]));
  const x = (i) => left + (i * (width - left - 8)) / Math.max(1, data.minutes.length - 1);
  const y = (v) => top + (height - top - bottom) * (1 - v / peak);
  svg.replaceChildren();
  for (const v of [0, peak / 2, peak]) {
    element("line", { x1: left, x2: width - 8, y1: y(v), y2: y(v), class: "grid" }, svg);
    element("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, svg).textContent = Math.round(v);
  }
  const last = data.minutes.length - 1;
  for (const [i, anchor] of [[0, "start"], [Math.floor(last / 2), "middle"], [last, "end"]]) {
    element("text", { x: x(i), y: height - 6, class: "axis", "text-anchor": anchor }, svg).textContent = data.minutes[i];
  }
  for (const name of series) {
    const points = data[name].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    element("polyline", { points, class: `line ${name}` }, svg);
  }
}

function showUpdated(ok) {
  const note = document.querySelector("[data-updated]");
  if (!note) return;
  note.textContent = ok ? `Updated ${new Date().toLocaleTimeString()}.` : "Live updates paused: the API did not answer; retrying.";
  note.classList.toggle("stale", !ok);
}

async function poll(root) {
  if (!document.hidden) {
    try {
      const response = await fetch(root.dataset.poll, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.status === 401) {
        location.assign(`/dashboard/login?next=${encodeURIComponent(location.pathname + location.search)}`);
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      fill(root, data);
      if ("chart" in root.dataset) drawChart(root.querySelector("svg"), data);
      showUpdated(true);
    } catch (error) {
      showUpdated(false);
    }
  }
  setTimeout(() => poll(root), Number(root.dataset.every || 5000));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  for (const root of document.querySelectorAll("[data-poll]")) {
    // The chart has no server-rendered form: draw it at once; the rest is fresh already.
    setTimeout(() => poll(root), "chart" in root.dataset ? 0 : Number(root.dataset.every || 5000));
  }
});
