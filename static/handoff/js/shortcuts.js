/* Keyboard shortcuts of the queue, inbox and lead pages, and htmx niceties.
 *
 * j / k move between rows, c claims, l logs a contact, b BANT, q qualifies, r returns,
 * Enter opens the lead, / focuses the search, ? shows the help, Esc closes.
 * Nothing fires while the user types in a field, or with Ctrl / Alt / Meta held.
 * Every action is a link or a form that works without this file.
 */
(function () {
  "use strict";

  var ACTION_KEYS = { c: "claim", l: "contact", b: "bant", q: "qualify", r: "return" };
  var selectedId = null;

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-shortcut-rows] [data-row]"));
  }

  function isTyping(target) {
    if (!target || !target.closest) return false;
    if (target.isContentEditable) return true;
    return Boolean(target.closest("input, textarea, select, [contenteditable]"));
  }

  function select(row, focus) {
    rows().forEach(function (r) { r.classList.remove("is-selected"); });
    if (!row) return;
    row.classList.add("is-selected");
    selectedId = row.id;
    var link = row.querySelector(".lead-link");
    if (focus && link) link.focus({ preventScroll: true });
    row.scrollIntoView({ block: "nearest" });
  }

  function selected() {
    return selectedId ? document.getElementById(selectedId) : null;
  }

  function move(step) {
    var all = rows();
    if (!all.length) return;
    var index = all.indexOf(selected());
    var next = index < 0 ? 0 : Math.min(Math.max(index + step, 0), all.length - 1);
    select(all[next], true);
  }

  function firstField(container) {
    return container && container.querySelector("input:not([type=hidden]), select, textarea, button[type=submit]");
  }

  function runAction(name) {
    var row = selected();
    if (row) {
      var control = row.querySelector('[data-action="' + name + '"]');
      if (control) control.click();
      return;
    }
    // The lead page: open the action's disclosure and put the cursor in its form.
    var details = document.querySelector('[data-action-details="' + name + '"]');
    if (details) {
      details.open = true;
      var field = firstField(details);
      if (field) field.focus();
      return;
    }
    var form = document.querySelector('[data-action-form="' + name + '"] button[type=submit]');
    if (form) form.click();
  }

  function toggleHelp() {
    var help = document.getElementById("shortcut-help");
    if (!help || typeof help.showModal !== "function") return;
    if (help.open) help.close(); else help.showModal();
  }

  function closePanel() {
    var row = selected();
    var panel = row && row.querySelector(".row-panel");
    if (panel && panel.firstElementChild) {
      panel.innerHTML = "";
      var link = row.querySelector(".lead-link");
      if (link) link.focus();
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      if (isTyping(event.target)) {
        var panel = event.target.closest(".row-panel");
        if (panel) { closePanel(); event.preventDefault(); }
      } else {
        closePanel();
      }
      return;
    }
    if (isTyping(event.target)) return;
    var key = event.key;
    if (key === "j" || key === "k") {
      move(key === "j" ? 1 : -1);
    } else if (ACTION_KEYS[key]) {
      runAction(ACTION_KEYS[key]);
    } else if (key === "/") {
      var search = document.querySelector("[role=search] input[type=search]");
      if (!search) return;
      search.focus();
      search.select();
    } else if (key === "?") {
      toggleHelp();
    } else if (key === "Enter" && selected() && document.activeElement === document.body) {
      var link = selected().querySelector(".lead-link");
      if (link) link.click();
    } else {
      return;
    }
    event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target.closest("[data-show-help]")) {
      toggleHelp();
    } else if (target.closest("[data-close-panel]")) {
      var panel = target.closest(".row-panel");
      if (panel) panel.innerHTML = "";
    } else {
      var row = target.closest("[data-shortcut-rows] [data-row]");
      if (row) select(row, false);
    }
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (target && target.classList && target.classList.contains("row-panel")) {
      var field = firstField(target);
      if (field) field.focus();
    }
    // A swapped row keeps its selection (same id, new element).
    var row = selected();
    if (row && !row.classList.contains("is-selected")) row.classList.add("is-selected");
    // A form swapped back with errors: put the cursor on the first wrong field.
    var invalid = document.querySelector(".row-panel [aria-invalid=true], #lead-work [aria-invalid=true], .inbox-card [aria-invalid=true]");
    if (invalid && event.detail.xhr && event.detail.xhr.status === 400) invalid.focus();
  });

  document.addEventListener("htmx:responseError", function (event) {
    var status = document.getElementById("htmx-status");
    if (!status) return;
    var code = event.detail.xhr ? event.detail.xhr.status : 0;
    var message = code === 403 ? status.dataset.forbidden : status.dataset.failed;
    status.textContent = message;
    status.hidden = false;
  });

  document.addEventListener("htmx:sendError", function () {
    var status = document.getElementById("htmx-status");
    if (!status) return;
    status.textContent = status.dataset.offline;
    status.hidden = false;
  });
})();
