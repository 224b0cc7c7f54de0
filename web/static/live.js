// docket dashboard: refresh the page's content in place while it is open,
// and ask before a destructive or sweeping action. Every page works
// without this script; it only spares the reload and the mistake.
(function () {
  "use strict";
  // Ask before deleting, and before acting on every task a filter matches.
  document.addEventListener("submit", function (e) {
    var b = e.submitter, f = e.target;
    var sweeping = f && f.closest && f.closest("details.all");
    if ((b && b.classList.contains("danger")) || sweeping) {
      var what = b ? b.textContent.trim() : "Go on";
      if (!window.confirm(what + "?")) e.preventDefault();
    }
  });
  var main = document.getElementById("live");
  if (!main || !main.dataset.refresh || !window.fetch || !window.DOMParser) return;
  var every = parseInt(main.dataset.refresh, 10);
  if (!(every > 0)) return;
  // busy: the user is doing something a refresh would undo.
  function busy() {
    var el = document.activeElement;
    if (el && el !== document.body && main.contains(el) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(el.tagName)) return true;
    if (String(window.getSelection ? window.getSelection() : "") !== "") return true;
    if (main.querySelector("details[open]")) return true;
    var fields = main.querySelectorAll("input, textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.type === "checkbox" || f.type === "radio") { if (f.checked !== f.defaultChecked) return true; }
      else if (f.tagName === "SELECT") {
        for (var j = 0; j < f.options.length; j++) if (f.options[j].selected !== f.options[j].defaultSelected) return true;
      } else if (f.type !== "hidden" && f.value !== f.defaultValue) return true;
    }
    return false;
  }
  function refresh() {
    if (document.hidden || busy()) return schedule();
    var ctl = window.AbortController ? new AbortController() : null;
    var timer = ctl && window.setTimeout(function () { ctl.abort(); }, Math.max(10000, 3 * every));
    fetch(window.location.href, { credentials: "same-origin", signal: ctl && ctl.signal })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html) {
          var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
          if (next && !busy()) main.innerHTML = next.innerHTML;
        }
      })
      .catch(function () {})
      .then(function () { if (timer) window.clearTimeout(timer); schedule(); });
  }
  function schedule() { window.setTimeout(refresh, every); }
  schedule();
})();
