/* The layer page: a grid of every unit, sorted and filtered in the page; the state lives in the URL hash
   (layer=NAME&sort=KEY&dir=desc&q=TEXT&field=KEY&min=A&max=B), so that a link restores it. */
(function () {
  "use strict";
  var NP = window.NP, A = window.ATLAS, el = NP.el;
  var grid = document.getElementById("grid");
  var controls = {sort: document.getElementById("sort"), dir: document.getElementById("dir"),
                  q: document.getElementById("q"), field: document.getElementById("field"),
                  min: document.getElementById("min"), max: document.getElementById("max")};
  var cells = [], data = null, current = null, observer = null;
  window.ATLAS_TIMING = {};

  function state() {
    var p = new URLSearchParams(location.hash.slice(1));
    return {layer: p.get("layer") || A.layers[0].name, sort: p.get("sort") || "", dir: p.get("dir") || "desc",
            q: p.get("q") || "", field: p.get("field") || "", min: p.get("min") || "", max: p.get("max") || ""};
  }

  function save() {
    var p = new URLSearchParams();
    p.set("layer", current.name);
    ["sort", "dir", "q", "field", "min", "max"].forEach(function (k) { if (controls[k].value) p.set(k, controls[k].value); });
    history.replaceState(null, "", "#" + p.toString());
  }

  function options(select, withNone) {
    NP.clear(select);
    if (withNone) select.appendChild(el("option", {value: "", text: "unit number"}));
    A.fields.forEach(function (f) { select.appendChild(el("option", {value: f.key, text: f.label})); });
  }

  function column(key) { var j = data.fields.indexOf(key); return j < 0 ? null : data.values[j]; }

  function apply() {
    var t0 = performance.now();
    var sortValues = column(controls.sort.value), sign = controls.dir.value === "asc" ? 1 : -1;
    var order = cells.map(function (c, i) { return i; });
    if (sortValues) {
      order.sort(function (a, b) {
        var x = sortValues[a], y = sortValues[b];
        if (x === null && y === null) return a - b;
        if (x === null) return 1;
        if (y === null) return -1;
        return x === y ? a - b : sign * (x - y);
      });
    }
    var words = controls.q.value.toLowerCase().trim();
    var range = column(controls.field.value);
    var lo = controls.min.value === "" ? -Infinity : Number(controls.min.value);
    var hi = controls.max.value === "" ? Infinity : Number(controls.max.value);
    var shown = 0, fragment = document.createDocumentFragment();
    order.forEach(function (i) {
      var cell = cells[i], ok = true;
      if (words && data.classes[i].toLowerCase().indexOf(words) < 0) ok = false;
      if (ok && range && (range[i] === null || range[i] < lo || range[i] > hi)) ok = false;
      cell.hidden = !ok;
      if (ok) shown++;
      cell.lastChild.textContent = sortValues ? NP.fmt(sortValues[i]) : "";
      fragment.appendChild(cell);
    });
    grid.appendChild(fragment);
    document.getElementById("count").textContent = shown + " of " + cells.length + " units";
    save();
    window.ATLAS_TIMING.apply = performance.now() - t0;
  }

  function render() {
    data = window.ATLAS_GRID[current.id];
    document.documentElement.style.setProperty("--thumb", data.size + "px");
    if (observer) observer.disconnect();
    observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (!e.isIntersecting) return;
        var img = e.target.querySelector("img[data-src]");
        if (img) { img.src = img.dataset.src; img.removeAttribute("data-src"); }
        observer.unobserve(e.target);
      });
    }, {rootMargin: "300px"}) : null;
    NP.clear(grid);
    cells = data.units.map(function (u, i) {
      var j = i % data.chunk, sheet = "sprites/" + current.id + "/g" + Math.floor(i / data.chunk) + ".jpg";
      var thumb = NP.tile(sheet, j % data.columns, Math.floor(j / data.columns), data.size, observer !== null);
      var cell = el("a", {"class": "cell", href: NP.unitHref(current.name, u), "data-unit": u,
                          title: data.classes[i]}, thumb, el("span", {text: "unit " + u}), el("span", {"class": "value"}));
      if (observer) observer.observe(cell);
      return cell;
    });
    apply();
    requestAnimationFrame(function () { window.ATLAS_TIMING.painted = performance.now(); });
  }

  function start() {
    var s = state();
    current = NP.layer(s.layer);
    if (!current) {
      document.getElementById("title").textContent = "No layer named " + s.layer + " in this atlas";
      return;
    }
    document.title = current.name + " \u00b7 unit atlas";
    document.getElementById("title").textContent = current.name;
    document.getElementById("summary").textContent = current.count + " units \u00b7 " + A.model + " \u00b7 top images by " + A.stat;
    ["sort", "dir", "q", "field", "min", "max"].forEach(function (k) { controls[k].value = s[k]; });
    NP.load("data/" + current.id + "/grid.js").then(render, function (e) {
      document.getElementById("count").textContent = e.message;
    });
  }

  options(controls.sort, true);
  options(controls.field, false);
  controls.field.insertBefore(el("option", {value: "", text: "(none)"}), controls.field.firstChild);
  ["sort", "dir", "field"].forEach(function (k) { controls[k].addEventListener("change", apply); });
  ["q", "min", "max"].forEach(function (k) { controls[k].addEventListener("input", apply); });
  window.addEventListener("hashchange", function () {
    var s = state();
    if (!current || s.layer !== current.name) start();
  });
  start();
})();
