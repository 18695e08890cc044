/*
 * LeadOps website snippet: page views, visitor identification and form helpers.
 *
 *   <script async src="https://leadops.example.com/capture/snippet.js"></script>
 *
 * Optional attributes on that tag:
 *   data-cookie-domain="example.co.jp"  share the visitor across sub-domains
 *   data-respect-dnt                    send no page views when Do Not Track is on
 *   data-manual                         no automatic page view (single-page apps call
 *                                       window.leadops.pageView() after each route change)
 *
 * Cookies (first-party, on this site's domain, written by this script):
 *   leadops_vid  a random visitor id, sent with every page view and form post
 *   leadops_lid  the signed identity LeadOps issues after a form post or an email click
 *
 * An email click lands with ?_lo=<token>: it is sent once, then removed from the address
 * bar. Forms posting to LeadOps (/capture/forms/<key>/, or marked data-leadops-form) get
 * the visitor id added and are sent with fetch, with each error shown next to its field
 * (an element [data-leadops-error="<field>"] if the page has one); [data-leadops-success]
 * inside the form is shown after a successful post without a `next` page.
 */
(function () {
  "use strict";
  if (window.leadops && window.leadops.loaded) return;

  var VID = "leadops_vid", LID = "leadops_lid", CLICK = "_lo", ERRORS = "#leadops-errors=";
  var YEAR = 365 * 24 * 3600;
  var script = document.currentScript ||
    document.querySelector('script[src*="/capture/snippet.js"]');
  if (!script) return;
  var base = new URL(script.src, location.href).origin;
  var cookieDomain = script.getAttribute("data-cookie-domain");

  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return "";
  }

  function writeCookie(name, value, maxAge) {
    var cookie = name + "=" + encodeURIComponent(value) + "; path=/; max-age=" + maxAge +
      "; SameSite=Lax";
    if (cookieDomain) cookie += "; domain=" + cookieDomain;
    if (location.protocol === "https:") cookie += "; Secure";
    document.cookie = cookie;
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); });
    return h.slice(0, 4).join("") + "-" + h.slice(4, 6).join("") + "-" +
      h.slice(6, 8).join("") + "-" + h.slice(8, 10).join("") + "-" + h.slice(10).join("");
  }

  function visitorId() {
    var id = readCookie(VID);
    if (!/^[0-9a-f-]{36}$/i.test(id)) id = newId();
    writeCookie(VID, id, 2 * YEAR); // refreshed on every visit
    return id;
  }

  function remember(answer) {
    if (answer && answer.identity) writeCookie(LID, answer.identity, 400 * 24 * 3600);
    else if (answer && answer.forget) writeCookie(LID, "", 0);
  }

  // The click token: read once, then out of the address bar (and out of bookmarks,
  // shares and analytics).
  function takeClickToken() {
    var url = new URL(location.href);
    var token = url.searchParams.get(CLICK);
    if (token === null) return "";
    url.searchParams.delete(CLICK);
    if (history.replaceState) history.replaceState(history.state, "", url.href);
    return token;
  }

  var clickToken = takeClickToken();

  function pageView() {
    if (script.hasAttribute("data-respect-dnt") && navigator.doNotTrack === "1") return;
    var body = {
      visitor: visitorId(), view: newId(), url: location.href.split("#")[0], title: document.title,
      referrer: document.referrer, identity: readCookie(LID), click: clickToken
    };
    clickToken = "";
    // text/plain keeps this a CORS "simple" request: no preflight round trip.
    fetch(base + "/capture/pv/", {
      method: "POST", body: JSON.stringify(body), keepalive: true, credentials: "omit",
      headers: { "Content-Type": "text/plain;charset=UTF-8" }
    }).then(function (response) {
      return response.status === 200 ? response.json() : null;
    }).then(remember).catch(function () { /* never break the page */ });
  }

  // --- forms ---------------------------------------------------------------------------

  function isLeadOpsForm(form) {
    return form.hasAttribute("data-leadops-form") ||
      (form.action || "").indexOf(base + "/capture/forms/") === 0;
  }

  function hidden(form, name, value) {
    var input = form.querySelector('input[name="' + name + '"]');
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      form.appendChild(input);
    }
    input.value = value;
  }

  function clearErrors(form) {
    var shown = form.querySelectorAll("[data-leadops-error]");
    for (var i = 0; i < shown.length; i++) {
      shown[i].textContent = "";
      if (shown[i].hasAttribute("data-leadops-made")) shown[i].remove();
    }
    var invalid = form.querySelectorAll('[aria-invalid="true"]');
    for (var j = 0; j < invalid.length; j++) invalid[j].removeAttribute("aria-invalid");
  }

  function errorSlot(form, field) {
    var slot = form.querySelector('[data-leadops-error="' + field + '"]');
    if (slot) return slot;
    var input = form.querySelector('[name="' + field + '"]:not([type="hidden"])');
    slot = document.createElement("p");
    slot.className = "leadops-error";
    slot.setAttribute("data-leadops-error", field);
    slot.setAttribute("data-leadops-made", "");
    slot.setAttribute("role", "alert");
    if (input && input.parentNode) input.parentNode.insertBefore(slot, input.nextSibling);
    else form.insertBefore(slot, form.firstChild);
    return slot;
  }

  function showErrors(form, errors) {
    clearErrors(form);
    Object.keys(errors).forEach(function (field) {
      var input = form.querySelector('[name="' + field + '"]:not([type="hidden"])');
      var slot = errorSlot(form, input ? field : "__all__");
      slot.textContent = (slot.textContent ? slot.textContent + " " : "") +
        [].concat(errors[field]).join(" ");
      if (input) input.setAttribute("aria-invalid", "true");
    });
  }

  function succeeded(form, answer) {
    remember(answer);
    if (answer.redirect) { location.assign(answer.redirect); return; }
    clearErrors(form);
    form.reset();
    hidden(form, "leadops_sid", newId()); // the next post is another submission
    var done = form.querySelector("[data-leadops-success]");
    if (done) done.hidden = false;
  }

  function send(event) {
    var form = event.target;
    // The page's own validation runs first and may stop the post.
    if (event.defaultPrevented || !isLeadOpsForm(form)) return;
    if (form.getAttribute("data-leadops-ajax") === "false") { prepare(form); return; }
    event.preventDefault();
    prepare(form);
    fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "omit",
      headers: { Accept: "application/json" }
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (response.ok) succeeded(form, answer);
        else showErrors(form, answer.errors || { __all__: [answer.detail] });
      });
    }).catch(function () { form.submit(); }); // offline or blocked: a classic post
  }

  function prepare(form) {
    hidden(form, VID, visitorId());
    if (!form.querySelector('input[name="leadops_sid"]')) hidden(form, "leadops_sid", newId());
  }

  // After a classic post with errors LeadOps redirects back here with #leadops-errors=…
  function showReturnedErrors() {
    if (location.hash.indexOf(ERRORS) !== 0) return;
    var errors;
    try { errors = JSON.parse(decodeURIComponent(location.hash.slice(ERRORS.length))); }
    catch (e) { return; }
    var forms = Array.prototype.filter.call(document.forms, isLeadOpsForm);
    if (forms.length) showErrors(forms[0], errors);
    if (history.replaceState) {
      history.replaceState(history.state, "", location.pathname + location.search);
    }
  }

  function start() {
    Array.prototype.filter.call(document.forms, isLeadOpsForm).forEach(prepare);
    showReturnedErrors();
  }

  document.addEventListener("submit", send);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();

  window.leadops = { loaded: true, pageView: pageView, visitorId: visitorId };
  if (!script.hasAttribute("data-manual")) pageView();
})();
