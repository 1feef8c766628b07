/*
 * "Add another" for plain Django formsets rendered as table rows: clones the empty form kept in a <template>
 * (id "<prefix>-empty-row") and bumps the management form's TOTAL_FORMS.
 */
(function () {
  "use strict";

  function addRow(prefix) {
    var template = document.getElementById(prefix + "-empty-row");
    var total = document.getElementById("id_" + prefix + "-TOTAL_FORMS");
    var table = document.querySelector('table[data-formset-prefix="' + prefix + '"] tbody');
    if (!template || !total || !table) { return; }
    var index = parseInt(total.value, 10);
    var html = template.innerHTML.replace(/__prefix__/g, String(index));
    var holder = document.createElement("tbody");
    holder.innerHTML = html;
    while (holder.firstElementChild) { table.appendChild(holder.firstElementChild); }
    total.value = String(index + 1);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-add-row]");
    if (!button) { return; }
    event.preventDefault();
    addRow(button.getAttribute("data-add-row"));
  });
})();
