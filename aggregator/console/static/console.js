// trs-aggregator console: small enhancements; every page works without this file.
"use strict";
(function () {
  var units = [["d", 86400], ["h", 3600], ["min", 60]];
  function ago(date) {
    var s = Math.round((Date.now() - date.getTime()) / 1000);
    var future = s < 0;
    s = Math.abs(s);
    if (s < 60) return future ? "in under a minute" : "just now";
    for (var i = 0; i < units.length; i++) {
      if (s >= units[i][1]) {
        var n = Math.floor(s / units[i][1]) + " " + units[i][0];
        return future ? "in " + n : n + " ago";
      }
    }
    return "";
  }
  function relativeTimes() {
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var d = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(d)) {
        var span = document.createElement("span");
        span.className = "small";
        span.textContent = " (" + ago(d) + ")";
        times[i].after(span);
      }
    }
  }
  function copyButtons() {
    if (!navigator.clipboard) return;
    var blocks = document.querySelectorAll(".snippet pre");
    for (var i = 0; i < blocks.length; i++) {
      (function (pre) {
        var b = document.createElement("button");
        b.type = "button";
        b.className = "copy";
        b.textContent = "Copy";
        b.addEventListener("click", function () {
          navigator.clipboard.writeText(pre.textContent).then(function () { b.textContent = "Copied"; });
        });
        pre.parentNode.querySelector("figcaption").appendChild(b);
      })(blocks[i]);
    }
  }
  function slashFocusesSearch() {
    var q = document.getElementById("q");
    if (!q) return;
    document.addEventListener("keydown", function (e) {
      var t = e.target && e.target.tagName;
      if (e.key === "/" && t !== "INPUT" && t !== "TEXTAREA" && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        q.focus();
      }
    });
  }
  document.documentElement.dataset.enhanced = "1";
  relativeTimes();
  copyButtons();
  slashFocusesSearch();
})();
