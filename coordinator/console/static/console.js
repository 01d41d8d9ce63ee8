// The console's only script of its own: local times, sortable tables, the backlog chart.
// Pages work without it (UTC times, server order, the numbers in a table under the chart).
(function () {
  "use strict";

  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at)) { el.textContent = format.format(at); }
    });
  }

  function cellValue(row, index, kind) {
    var cell = row.cells[index];
    if (!cell) { return ""; }
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent.trim();
    if (kind === "number") { var n = parseFloat(raw); return isNaN(n) ? -Infinity : n; }
    return raw;  // dates are ISO 8601 UTC: they sort as text
  }

  function sortables(root) {
    root.querySelectorAll("table.sortable th[data-sort] button.sort").forEach(function (button) {
      if (button.dataset.bound) { return; }
      button.dataset.bound = "1";
      button.addEventListener("click", function () {
        var th = button.closest("th"), table = th.closest("table");
        var index = Array.prototype.indexOf.call(th.parentNode.children, th);
        var kind = th.getAttribute("data-sort");
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("th[aria-sort]").forEach(function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, kind), y = cellValue(b, index, kind);
          var order = x < y ? -1 : x > y ? 1 : 0;
          return ascending ? order : -order;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function backlogChart() {
    var canvas = document.getElementById("backlog-chart");
    var data = document.getElementById("backlog-data");
    if (!canvas || !data || typeof Chart === "undefined") { return; }
    var d = JSON.parse(data.textContent);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: d.labels,
        datasets: [{
          label: "Backlog age, % of retention",
          data: d.percent,
          backgroundColor: d.percent.map(function (p) { return p > 100 ? "#a4161a" : "#16324f"; })
        }]
      },
      options: {
        indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { legend: { display: false } },
        scales: {
          x: { beginAtZero: true, suggestedMax: 120,
               title: { display: true, text: "backlog age, % of retention (over 100: kept too long)" } }
        }
      }
    });
  }

  function enhance(root) { localTimes(root); sortables(root); }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    backlogChart();
  });
  // Fragments htmx swapped in get the same treatment.
  document.addEventListener("htmx:afterSettle", function (event) { enhance(event.target); });
})();
