// Draws the console's charts from the JSON each page embeds beside a canvas
// (<script type="application/json" class="chart-data">). No inline script runs: the
// page's Content-Security-Policy allows only files served by suanli itself.
"use strict";
(function () {
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  const STATE = {running: "#2ca02c", succeeded: "#1f77b4", failed: "#d62728",
                 cancelled: "#7f7f7f", preempted: "#ff7f0e", queued: "#bcbd22"};
  const colour = (i) => PALETTE[i % PALETTE.length];
  const title = (text) => ({display: !!text, text: text || ""});

  function series(named, type) {
    return Object.entries(named).map(([label, data], i) => ({
      label, data, type, backgroundColor: colour(i), borderColor: colour(i),
      showLine: type === "scatter", pointRadius: type === "scatter" ? 0 : 3,
    }));
  }

  function config(d) {
    switch (d.kind) {
      case "stacked":
      case "bars":
        return {type: "bar", data: {labels: d.labels, datasets: series(d.series)},
          options: {plugins: {title: title(d.title)},
            scales: {x: {stacked: d.kind === "stacked"}, y: {stacked: d.kind === "stacked", beginAtZero: true}}}};
      case "frontier": {
        const pick = (front) => d.points.filter((p) => p.front === front);
        return {type: "scatter", data: {datasets: [
            {label: "on the frontier", data: pick(true), backgroundColor: colour(1), pointRadius: 5},
            {label: "beaten on time and cost", data: pick(false), backgroundColor: "#bbbbbb", pointRadius: 3}]},
          options: {plugins: {title: title(d.title), tooltip: {callbacks: {label: (c) =>
              `${c.raw.label}: ${c.raw.x.toFixed(1)} h, $${Math.round(c.raw.y).toLocaleString()}`}}},
            scales: {x: {title: {display: true, text: "hours to train"}},
                     y: {title: {display: true, text: "USD"}}}}};
      }
      case "lines":
        return {type: "scatter", data: {datasets: series(d.series, "scatter")},
          options: {plugins: {title: title(d.title)},
            scales: {x: {type: d.x_log ? "logarithmic" : "linear", title: {display: true, text: d.x_title}},
                     y: {title: {display: true, text: d.y_title}}}}};
      case "prices": {
        const now = Date.now() / 1000;
        const named = {};
        for (const [k, pts] of Object.entries(d.series)) {
          named[k] = pts.map((p) => ({x: (p.x - now) / 3600, y: p.y}));
        }
        return {type: "scatter", data: {datasets: series(named, "scatter")},
          options: {scales: {x: {title: {display: true, text: "hours before now"}},
                             y: {title: {display: true, text: "USD per unit-hour"}}}}};
      }
      case "timeline": {
        const nodes = [...new Set(d.bars.map((b) => b.y))];
        return {height: 70 + 30 * nodes.length, type: "bar", data: {labels: nodes, datasets: [{label: "jobs", maxBarThickness: 22,
            data: d.bars.map((b) => ({x: b.x, y: b.y, label: b.label})),
            backgroundColor: d.bars.map((b) => STATE[b.state] || "#999")}]},
          options: {indexAxis: "y", plugins: {legend: {display: false}, tooltip: {callbacks: {
              label: (c) => c.raw.label}}},
            scales: {x: {title: {display: true, text: "minutes before now"}}}}};
      }
    }
    return null;
  }

  function draw(root) {
    if (typeof Chart === "undefined") return;
    for (const el of root.querySelectorAll("script.chart-data")) {
      const canvas = el.parentElement.querySelector("canvas");
      if (!canvas || canvas.dataset.drawn) continue;
      const cfg = config(JSON.parse(el.textContent));
      if (!cfg) continue;
      if (cfg.height) canvas.parentElement.style.height = `${Math.min(cfg.height, 900)}px`;
      cfg.options = Object.assign({animation: false, responsive: true, maintainAspectRatio: false}, cfg.options);
      new Chart(canvas, cfg);
      canvas.dataset.drawn = "1";
    }
  }

  document.addEventListener("DOMContentLoaded", () => draw(document));
  document.addEventListener("htmx:afterSwap", (e) => draw(e.target));
})();
