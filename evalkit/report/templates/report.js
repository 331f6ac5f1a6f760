/* evalkit report: sortable tables and a lazily rendered sample browser.
   Every piece of data reaches the DOM through textContent or a form value, never as markup. */
(function () {
  "use strict";

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // ------------------------------------------------------------ sortable tables

  function sortKey(row, column, numeric) {
    const cell = row.cells[column];
    const raw = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
    if (!numeric) return raw.toLowerCase();
    return raw === "" ? NaN : parseFloat(raw);
  }

  function sortTable(table, column, header) {
    const numeric = header.dataset.type === "num";
    const current = header.getAttribute("aria-sort");
    const first = header.dataset.first === "asc" || !numeric ? "ascending" : "descending";
    const direction = current ? (current === "ascending" ? "descending" : "ascending") : first;
    for (const other of header.parentNode.cells) other.removeAttribute("aria-sort");
    header.setAttribute("aria-sort", direction);
    const sign = direction === "ascending" ? 1 : -1;
    const body = table.tBodies[0];
    const rows = Array.from(body.rows).map((row, index) => ({ row, index, key: sortKey(row, column, numeric) }));
    rows.sort((a, b) => {
      const aMissing = numeric && Number.isNaN(a.key);
      const bMissing = numeric && Number.isNaN(b.key);
      if (aMissing || bMissing) return aMissing === bMissing ? a.index - b.index : aMissing ? 1 : -1;
      if (a.key < b.key) return -sign;
      if (a.key > b.key) return sign;
      return a.index - b.index;
    });
    body.append(...rows.map((entry) => entry.row));
  }

  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((header, column) => {
      header.tabIndex = 0;
      header.title = "sort by this column";
      header.addEventListener("click", () => sortTable(table, column, header));
      header.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, column, header); }
      });
    });
  }

  // ------------------------------------------------------------ sample browser

  const data = JSON.parse(document.getElementById("report-data").textContent);
  const strings = data.strings;
  const lowered = new Array(strings.length);
  const text = (index) => (index >= 0 ? strings[index] : "");
  const lower = (index) => {
    if (index < 0) return "";
    if (lowered[index] === undefined) lowered[index] = strings[index].toLowerCase();
    return lowered[index];
  };

  const ui = {
    task: document.getElementById("sb-task"),
    filter: document.getElementById("sb-filter"),
    sort: document.getElementById("sb-sort"),
    pageSize: document.getElementById("sb-page-size"),
    prev: document.getElementById("sb-prev"),
    next: document.getElementById("sb-next"),
    count: document.getElementById("sb-count"),
    columns: document.getElementById("sb-columns"),
    head: document.getElementById("sb-head"),
    rows: document.getElementById("sb-rows"),
  };
  const MAX_DEFAULT_COLUMNS = 6;
  const state = { task: null, shown: [], matches: [], page: 0 };

  function columnName(column) {
    return column.model + " · " + column.backend + " · " + column.prompt + " · " + column.decoding + " (" + column.run + ")";
  }

  function selectTask(index) {
    state.task = data.tasks[index];
    state.shown = state.task.columns.map((_, i) => i < MAX_DEFAULT_COLUMNS);
    ui.columns.replaceChildren(el("legend", "Columns shown"));
    state.task.columns.forEach((column, i) => {
      const box = el("input");
      box.type = "checkbox";
      box.checked = state.shown[i];
      box.addEventListener("change", () => { state.shown[i] = box.checked; fillSort(); update(); });
      const label = el("label");
      label.append(box, document.createTextNode(" " + columnName(column)));
      ui.columns.append(label);
    });
    fillSort();
    update();
  }

  function visibleColumns() {
    return state.task.columns.map((column, i) => ({ column, i })).filter((entry) => state.shown[entry.i]);
  }

  function fillSort() {
    const previous = ui.sort.value;
    const options = [el("option", "document order")];
    options[0].value = "";
    for (const { column, i } of visibleColumns()) {
      for (const metric of Object.keys(column.scores)) {
        for (const [direction, word] of [["desc", "high first"], ["asc", "low first"]]) {
          const option = el("option", metric + " of " + columnName(column) + ", " + word);
          option.value = i + "\u0000" + metric + "\u0000" + direction;
          options.push(option);
        }
      }
    }
    ui.sort.replaceChildren(...options);
    if (options.some((option) => option.value === previous)) ui.sort.value = previous;
  }

  function computeMatches() {
    const task = state.task;
    const needle = ui.filter.value.trim().toLowerCase();
    const shown = visibleColumns();
    let matches = [];
    for (let d = 0; d < task.docs.length; d++) {
      if (needle) {
        const [id, prompt, reference] = task.docs[d];
        const hit = lower(id).includes(needle) || lower(prompt).includes(needle) || lower(reference).includes(needle) ||
          shown.some(({ column }) => lower(column.outputs[d]).includes(needle));
        if (!hit) continue;
      }
      matches.push(d);
    }
    if (ui.sort.value) {
      const [columnIndex, metric, direction] = ui.sort.value.split("\u0000");
      const values = task.columns[Number(columnIndex)].scores[metric];
      const sign = direction === "asc" ? 1 : -1;
      matches = matches.map((d, order) => ({ d, order, v: values[d] }));
      matches.sort((a, b) => {
        const aMissing = a.v === null || a.v === undefined;
        const bMissing = b.v === null || b.v === undefined;
        if (aMissing || bMissing) return aMissing === bMissing ? a.order - b.order : aMissing ? 1 : -1;
        return a.v === b.v ? a.order - b.order : (a.v - b.v) * sign;
      });
      matches = matches.map((entry) => entry.d);
    }
    state.matches = matches;
  }

  function textCell(content, className) {
    const cell = el("td", null, className);
    if (content) cell.append(el("pre", content, "text"));
    else cell.append(el("span", "(none)", "empty"));
    return cell;
  }

  function render() {
    const task = state.task;
    const shown = visibleColumns();
    const size = Number(ui.pageSize.value);
    const pages = Math.max(1, Math.ceil(state.matches.length / size));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * size;
    const slice = state.matches.slice(start, start + size);

    const headRow = el("tr");
    headRow.append(el("th", "doc", "doc-id"), el("th", "Prompt"), el("th", "Reference"));
    for (const { column } of shown) headRow.append(el("th", columnName(column)));
    ui.head.replaceChildren(headRow);

    const rows = slice.map((d) => {
      const [id, prompt, reference] = task.docs[d];
      const row = el("tr", null, "sb-doc");
      row.append(el("td", text(id), "doc-id"), textCell(text(prompt)), textCell(text(reference)));
      for (const { column } of shown) {
        const cell = textCell(text(column.outputs[d]), "output");
        const scores = Object.entries(column.scores)
          .filter(([, values]) => values[d] !== null && values[d] !== undefined)
          .map(([metric, values]) => metric + " = " + values[d]);
        if (scores.length) cell.append(el("div", scores.join(" · "), "scores"));
        const other = column.other[d];
        if (other) {
          const details = el("details");
          details.append(el("summary", "other fields"));
          for (let k = 0; k < other.length; k += 2) {
            details.append(el("div", text(other[k]), "field-name"), el("pre", text(other[k + 1]), "text"));
          }
          cell.append(details);
        }
        row.append(cell);
      }
      return row;
    });
    ui.rows.replaceChildren(...rows);
    ui.count.textContent = state.matches.length
      ? "rows " + (start + 1) + "–" + (start + slice.length) + " of " + state.matches.length + " (" + task.docs.length + " items)"
      : "no matching rows (" + task.docs.length + " items)";
    ui.prev.disabled = state.page === 0;
    ui.next.disabled = state.page >= pages - 1;
  }

  function update() {
    state.page = 0;
    computeMatches();
    render();
  }

  if (data.tasks.length) {
    data.tasks.forEach((task, i) => {
      const option = el("option", task.name + " (" + task.docs.length + " items)");
      option.value = String(i);
      ui.task.append(option);
    });
    let timer = null;
    ui.task.addEventListener("change", () => selectTask(Number(ui.task.value)));
    ui.filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(update, 120); });
    ui.sort.addEventListener("change", update);
    ui.pageSize.addEventListener("change", render);
    ui.prev.addEventListener("click", () => { state.page -= 1; render(); });
    ui.next.addEventListener("click", () => { state.page += 1; render(); });
    selectTask(0);
  } else {
    ui.count.textContent = "no per-sample records in these runs";
  }
  document.body.dataset.ready = "1";
})();
