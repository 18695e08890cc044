// The segment admin's condition rows (templates/admin/nurturing/segment/change_form.html):
// operators and value suggestions follow the chosen field, and "Add a condition" adds a
// row. A static file, not an inline script: the Content-Security-Policy allows no inline
// script.
(function () {
  "use strict";
  const allowlist = JSON.parse(document.getElementById("segment-allowlist").textContent).fields;
  const table = document.getElementById("segment-conditions");
  const total = document.getElementById("id_conditions-TOTAL_FORMS");

  function input(row, name) { return row.querySelector('[name$="-' + name + '"]'); }
  function show(element, visible) { if (element) element.closest("td").classList.toggle("is-hidden", !visible); }

  // Offer only the operators of the chosen field, and its known values as suggestions.
  function sync(row) {
    const field = input(row, "field"), op = input(row, "op"), value = input(row, "value");
    if (!field || !op) return;
    const spec = allowlist[field.value];
    for (const option of op.options) {
      option.hidden = Boolean(option.value && spec && !spec.ops.includes(option.value));
    }
    if (spec && !spec.ops.includes(op.value)) op.value = spec.ops[0];
    const kind = spec ? spec.kind : "";
    show(value, kind !== "activity" && op.value !== "empty");
    show(input(row, "value_to"), op.value === "between");
    show(input(row, "event_type"), kind === "activity");
    show(input(row, "days"), kind === "activity");
    if (spec && spec.values.length) value.setAttribute("list", "segment-values-" + field.value);
    else value.removeAttribute("list");
  }

  table.addEventListener("change", (event) => sync(event.target.closest("tbody")));
  table.querySelectorAll("tbody").forEach(sync);

  document.getElementById("segment-add-condition").addEventListener("click", () => {
    const index = Number(total.value);
    const html = document.getElementById("segment-condition-template").innerHTML.replace(/__prefix__/g, index);
    table.insertAdjacentHTML("beforeend", html);
    total.value = index + 1;
    sync(table.lastElementChild);
  });
})();
