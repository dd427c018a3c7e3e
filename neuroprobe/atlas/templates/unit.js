/* One generic page for every unit, driven by the hash: unit.html#LAYER/UNIT (LAYER quoted as a URI component). */
(function () {
  "use strict";
  var NP = window.NP, A = window.ATLAS, el = NP.el;
  var page = document.getElementById("page"), lightbox = document.getElementById("lightbox");
  window.ATLAS_TIMING = {};

  function where() {
    var hash = location.hash.slice(1), cut = hash.lastIndexOf("/");
    var name = "";
    try { name = decodeURIComponent(hash.slice(0, cut)); } catch (e) { name = ""; }
    return {layer: NP.layer(name), name: name, unit: parseInt(hash.slice(cut + 1), 10)};
  }

  function field(record, key) {
    for (var j = 0; j < A.fields.length; j++) if (A.fields[j].key === key) return record.v[j];
    return null;
  }

  function figure(entry, rfBox, map, mapH, mapW) {
    var fig = el("div", {"class": "figure"}, el("img", {src: "img/" + entry.i + ".jpg", alt: "image " + entry.i}));
    if (map) fig.appendChild(NP.heat(map, mapH, mapW));
    if (rfBox) {
      var b = entry.b, size = A.crop || 224;
      fig.appendChild(el("div", {"class": "box", style: {left: (100 * b[0] / size) + "%", top: (100 * b[1] / size) + "%",
        width: (100 * (b[2] - b[0]) / size) + "%", height: (100 * (b[3] - b[1]) / size) + "%"}}));
    }
    return fig;
  }

  function open(entry, direction) {
    NP.clear(lightbox);
    lightbox.appendChild(figure(entry, true, entry.m, entry.mh, entry.mw));
    lightbox.appendChild(el("p", {text: direction + " image " + entry.i + " \u00b7 value " + NP.fmt(entry.v) + " \u00b7 " + entry.l}));
    lightbox.appendChild(el("p", {"class": "path", text: entry.p}));
    lightbox.appendChild(el("p", {text: "(click to close)"}));
    lightbox.hidden = false;
  }

  function strip(chunk, record, list, direction, offset) {
    var box = el("div", {"class": "strip", "data-direction": direction});
    list.forEach(function (entry, rank) {
      var picture = entry.s ? NP.tile(chunk.sprite, offset + rank, record.row, chunk.size)
                            : el("div", {"class": "thumb muted", title: "no crop (--profile lite)", text: "#" + entry.i,
                                         style: {width: chunk.size + "px", height: chunk.size + "px"}});
      var card = el("button", {"class": "card", type: "button", "data-image": entry.i, "data-value": entry.v,
                               title: "image " + entry.i + ": click for the full image"},
                    picture, el("span", {"class": "value", text: NP.fmt(entry.v)}),
                    el("span", {"class": "label", text: entry.l}));
      card.addEventListener("click", function () { open(entry, direction); });
      box.appendChild(card);
    });
    return box;
  }

  function histogram(h) {
    if (!h.counts.length) return el("p", {"class": "muted", text: "no finite values"});
    var most = Math.max.apply(null, h.counts), bars = el("div", {"class": "hist"});
    var width = (h.hi - h.lo) / h.counts.length;
    h.counts.forEach(function (c, i) {
      bars.appendChild(el("div", {style: {height: (100 * c / Math.max(most, 1)) + "%"},
        title: NP.fmt(h.lo + i * width) + " to " + NP.fmt(h.lo + (i + 1) * width) + ": " + c + " images"}));
    });
    return el("div", {}, bars, el("div", {"class": "axis"}, el("span", {text: NP.fmt(h.lo)}), el("span", {text: NP.fmt(h.hi)})));
  }

  function selectivity(record) {
    var table = el("table", {id: "selectivity"}, el("tr", {}, el("th", {text: "category"}), el("th", {text: "Malakhova"}),
      el("th", {text: "balanced"}), el("th", {text: "permutation p"}), el("th", {text: "in category among top-N"}),
      el("th", {text: "among bottom-N"}), el("th", {text: "N"})));
    A.categories.forEach(function (c) {
      var o = record.opp[c] || {};
      table.appendChild(el("tr", {"data-category": c}, el("td", {text: c}), NP.num(field(record, "malakhova[" + c + "]")),
        NP.num(field(record, "balanced[" + c + "]")), NP.num(field(record, "p[" + c + "]")),
        NP.num(o.positive_in_category === undefined ? null : o.positive_in_category),
        NP.num(o.negative_in_category === undefined ? null : o.negative_in_category), NP.num(o.n === undefined ? null : o.n)));
    });
    return table;
  }

  function render(L, unit, chunk, record) {
    NP.clear(page);
    window.scrollTo(0, 0);
    var idx = L.units.indexOf(unit);
    document.title = L.name + " / " + unit + " \u00b7 unit atlas";
    document.getElementById("title").textContent = L.name + " \u00b7 unit " + unit;
    var back = document.getElementById("back");
    back.setAttribute("href", NP.layerHref(L.name));
    back.textContent = "layer " + L.name;
    var prev = document.getElementById("prev"), next = document.getElementById("next");
    prev.setAttribute("href", NP.unitHref(L.name, L.units[Math.max(idx - 1, 0)]));
    next.setAttribute("href", NP.unitHref(L.name, L.units[Math.min(idx + 1, L.units.length - 1)]));
    prev.hidden = idx <= 0;
    next.hidden = idx >= L.units.length - 1;

    page.appendChild(el("h2", {text: "Top " + record.top.length + " images by " + A.stat}));
    page.appendChild(strip(chunk, record, record.top, "top", 0));
    page.appendChild(el("h2", {text: "Bottom " + record.bottom.length + " images by " + A.stat}));
    page.appendChild(strip(chunk, record, record.bottom, "bottom", A.k));
    page.appendChild(el("p", {"class": "muted", text: (L.rf === null ? "Whole images: this layer has no spatial " +
      "grid, or its receptive field is not known" : "Crops: the theoretical receptive field around the unit's peak") +
      (record.top.some(function (e) { return e.m; }) ? "; the full image (click) shows the stored spatial map."
                                                    : "; click for the full image.")}));
    if (record.vis) {
      var made = el("div", {"class": "strip manufactured"});
      ["max", "min"].forEach(function (d) {
        if (record.vis[d]) made.appendChild(el("div", {"class": "card"}, el("img", {src: record.vis[d], alt: d + " image"}),
          el("span", {text: "manufactured " + d})));
      });
      page.appendChild(el("h2", {text: "Manufactured images"}));
      page.appendChild(made);
    }
    page.appendChild(el("h2", {text: "Selectivity (" + A.stat + ", " + A.normalization + " normalized)"}));
    page.appendChild(selectivity(record));
    page.appendChild(el("p", {}, "CSI (Morcos): ", el("span", {id: "csi", "data-value": field(record, "csi"), text: NP.fmt(field(record, "csi"))}),
      " \u00b7 preferred class: ", el("span", {id: "csi-class", text: record.pref === null ? "\u2014" : record.pref}),
      record.pref_label ? " (" + record.pref_label + ")" : ""));
    page.appendChild(el("h2", {text: "Pooled " + A.stat + " over all images"}));
    page.appendChild(histogram(record.hist));
    page.appendChild(el("h2", {text: "Top classes among its top-" + A.n + " images"}));
    var classes = el("ol", {id: "classes"});
    record.classes.forEach(function (c) { classes.appendChild(el("li", {text: c[0] + " (" + c[1] + ")"})); });
    page.appendChild(classes);
    page.appendChild(el("h2", {text: "Receptive field"}));
    page.appendChild(el("table", {id: "rf"},
      el("tr", {}, el("td", {text: "theoretical size (px)"}), NP.num(field(record, "rf"))),
      el("tr", {}, el("td", {text: "empirical size (px)"}), NP.num(field(record, "erf")))));
    if (record.occ && record.occ.length) {
      page.appendChild(el("h2", {text: "Occlusion maps of its top images"}));
      var occ = el("div", {"class": "strip", id: "occlusion"});
      record.occ.forEach(function (o) { occ.appendChild(figure({i: o.i}, false, o.m, o.h, o.w)); });
      page.appendChild(occ);
    }
    page.appendChild(el("h2", {text: "All numbers"}));
    var all = el("table", {id: "numbers"});
    A.fields.forEach(function (f, j) { all.appendChild(el("tr", {"data-key": f.key}, el("td", {text: f.label}), NP.num(record.v[j]))); });
    page.appendChild(all);
    page.appendChild(el("h2", {text: "Reproduce"}));
    page.appendChild(el("pre", {id: "command", text: A.command + "\n# then open: " + NP.unitHref(L.name, unit)}));
    A.categories.forEach(function (c) {
      page.appendChild(el("pre", {"class": "report-command", text: "# the same numbers as tables:\n" + L.report[c]}));
    });
    requestAnimationFrame(function () { window.ATLAS_TIMING.painted = performance.now(); });
  }

  function show() {
    var w = where();
    lightbox.hidden = true;
    if (!w.layer || isNaN(w.unit) || w.layer.units.indexOf(w.unit) < 0) {
      NP.clear(page).appendChild(el("p", {text: "No unit " + location.hash.slice(1) + " in this atlas; pick one from a layer page."}));
      return;
    }
    var position = w.layer.units.indexOf(w.unit), c = Math.floor(position / A.chunk), key = w.layer.id + "/" + c;
    NP.load("data/" + w.layer.id + "/c" + c + ".js").then(function () {
      var chunk = window.ATLAS_CHUNKS[key];
      render(w.layer, w.unit, chunk, chunk.units[position - c * A.chunk]);
    }, function (e) { NP.clear(page).appendChild(el("p", {text: e.message})); });
  }

  lightbox.addEventListener("click", function () { lightbox.hidden = true; });
  window.addEventListener("hashchange", show);
  show();
})();
