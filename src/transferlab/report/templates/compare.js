document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === undefined || y === undefined) {  // text column
          return (asc ? 1 : -1) * a.cells[col].textContent.localeCompare(b.cells[col].textContent);
        }
        if (x === "") return 1;  // missing values last either way
        if (y === "") return -1;
        return (asc ? 1 : -1) * (parseFloat(x) - parseFloat(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
