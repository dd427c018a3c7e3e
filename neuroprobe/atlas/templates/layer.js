/* The layer page: a grid of every unit, sorted and filtered in the page; the state lives in the URL hash
   (layer=NAME&sort=KEY&dir=desc&q=TEXT&field=KEY&min=A&max=B), so that a link restores it. */
(function () {
  "use strict";
  var NP = window.NP, A = window.ATLAS, el = NP.el;
  var grid = document.getElementById("grid");
  var controls = {sort: document.getElementById("sort"), dir: document.getElementById("dir"),
                  q: document.getElementById("q"), field: document.getElementById("field"),
                  min: document.getElementById("min"), max: document.getElementById("max")};
  var PAGE = 120;          // cells added to the page at a time: rows load as they scroll into view
  var made = [], order = [], rendered = 0, data = null, current = null, sortValues = null;
  var sentinel = el("div", {id: "more", "aria-hidden": "true"});
  var watcher = new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; })) more();
  }, {rootMargin: "600px"});
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

  /* The cell of the i-th unit of the layer, made the first time it is shown. */
  function cell(i) {
    if (!made[i]) {
      var u = data.units[i], j = i % data.chunk, sheet = "sprites/" + current.id + "/g" + Math.floor(i / data.chunk) + ".jpg";
      made[i] = el("a", {"class": "cell", href: NP.unitHref(current.name, u), "data-unit": u, title: data.classes[i]},
                   NP.tile(sheet, j % data.columns, Math.floor(j / data.columns), data.size, false),
                   el("span", {text: "unit " + u}), el("span", {"class": "value"}));
    }
    return made[i];
  }

  /* The next PAGE cells of the current order, before the sentinel; again while the sentinel is in view. */
  function more() {
    var end = Math.min(rendered + PAGE, order.length), fragment = document.createDocumentFragment();
    for (; rendered < end; rendered++) {
      var i = order[rendered], c = cell(i);
      c.lastChild.textContent = sortValues ? NP.fmt(sortValues[i]) : "";
      fragment.appendChild(c);
    }
    grid.insertBefore(fragment, sentinel);
    // observed afresh, the sentinel reports whether it is still in view after this layout (a later task),
    // so one page is drawn per frame and a screen taller than a page still fills
    watcher.unobserve(sentinel);
    if (rendered < order.length) watcher.observe(sentinel);
  }

  function apply() {
    var t0 = performance.now();
    sortValues = column(controls.sort.value);
    var sign = controls.dir.value === "asc" ? 1 : -1;
    var words = controls.q.value.toLowerCase().trim();
    var range = column(controls.field.value);
    var lo = controls.min.value === "" ? -Infinity : Number(controls.min.value);
    var hi = controls.max.value === "" ? Infinity : Number(controls.max.value);
    order = [];
    for (var i = 0; i < data.units.length; i++) {
      if (words && data.classes[i].toLowerCase().indexOf(words) < 0) continue;
      if (range && (range[i] === null || range[i] < lo || range[i] > hi)) continue;
      order.push(i);
    }
    if (sortValues) {
      order.sort(function (a, b) {
        var x = sortValues[a], y = sortValues[b];
        if (x === null && y === null) return a - b;
        if (x === null) return 1;
        if (y === null) return -1;
        return x === y ? a - b : sign * (x - y);
      });
    }
    NP.clear(grid).appendChild(sentinel);
    rendered = 0;
    more();
    document.getElementById("count").textContent = order.length + " of " + data.units.length + " units";
    save();
    window.ATLAS_TIMING.apply = performance.now() - t0;
  }

  function render() {
    data = window.ATLAS_GRID[current.id];
    made = [];
    document.documentElement.style.setProperty("--thumb", data.size + "px");
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
