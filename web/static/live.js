// docket dashboard: refresh the page's content in place while it is open.
// Every page reads without this script; it only spares the reload. It
// pauses while the user has a form field focused, text selected, a
// checkbox ticked or a <details> open, so nothing they are doing is lost.
(function () {
  "use strict";
  var main = document.getElementById("live");
  if (!main || !main.dataset.refresh || !window.fetch || !window.DOMParser) return;
  var every = parseInt(main.dataset.refresh, 10);
  if (!(every > 0)) return;
  function busy() {
    var el = document.activeElement;
    if (el && el !== document.body && main.contains(el) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(el.tagName)) return true;
    if (String(window.getSelection ? window.getSelection() : "") !== "") return true;
    if (main.querySelector("input[type=checkbox]:checked")) return true;
    if (main.querySelector("details[open]")) return true;
    return false;
  }
  function refresh() {
    if (document.hidden || busy()) return schedule();
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Docket-Refresh": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html) {
          var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
          if (next && !busy()) main.innerHTML = next.innerHTML;
        }
      })
      .catch(function () {})
      .then(schedule);
  }
  function schedule() { window.setTimeout(refresh, every); }
  // Ask before acting on every task a filter matches.
  document.addEventListener("submit", function (e) {
    var b = e.submitter;
    if (b && b.classList.contains("danger") && !window.confirm(b.textContent.trim() + "?")) e.preventDefault();
  });
  schedule();
})();
