// Sorting and filtering of the leaderboard table; no library, works from file://.
(function () {
  "use strict";
  var table = document.getElementById("board");
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var familyFilter = document.getElementById("family-filter");
  var parcelFilter = document.getElementById("parcel-filter");

  function value(row, index, type) {
    var raw = row.cells[index].getAttribute("data-value");
    if (raw === null || raw === "") { return null; }  // a missing cell
    return type === "number" ? parseFloat(raw) : raw.toLowerCase();
  }

  function sortBy(index) {
    var header = headers[index];
    var type = header.getAttribute("data-type");
    // scores start high-to-low (best first), text and ranks A-Z / 1-n; a second click reverses
    var firstAscending = type !== "number" || header.getAttribute("data-first") === "asc";
    var ascending = header.classList.contains("sorted-desc") ||
      (!header.classList.contains("sorted-asc") && firstAscending);
    headers.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    header.classList.add(ascending ? "sorted-asc" : "sorted-desc");
    var rows = Array.prototype.slice.call(body.rows).map(function (row, position) {
      return { row: row, key: value(row, index, type), position: position };
    });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // missing cells always last
        return (a.key === null) - (b.key === null) || a.position - b.position;
      }
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      return (ascending ? order : -order) || a.position - b.position;  // stable
    });
    rows.forEach(function (item) { body.appendChild(item.row); });
  }

  function applyFilters() {
    var family = familyFilter.value;
    var parcel = parcelFilter.value;
    var shown = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var visible = !family || row.getAttribute("data-family") === family;
      row.classList.toggle("hidden", !visible);
      shown += visible ? 1 : 0;
    });
    Array.prototype.forEach.call(table.querySelectorAll("[data-parcel]"), function (cell) {
      var p = cell.getAttribute("data-parcel");
      cell.classList.toggle("hidden", !!parcel && p !== parcel && p !== "whole brain");
    });
    document.getElementById("shown").textContent = shown + " of " + body.rows.length + " models shown";
  }

  headers.forEach(function (header, index) {
    header.addEventListener("click", function () { sortBy(index); });
  });
  familyFilter.addEventListener("change", applyFilters);
  parcelFilter.addEventListener("change", applyFilters);
  applyFilters();
})();
