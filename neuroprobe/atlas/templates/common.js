/* Helpers every page shares. Data are set with textContent and setAttribute only, never as markup. */
window.NP = (function () {
  "use strict";
  var loading = {};

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "text") node.textContent = String(value);
      else if (name === "style") Object.assign(node.style, value);
      else node.setAttribute(name, String(value));
    });
    for (var i = 2; i < arguments.length; i++) {
      var kid = arguments[i];
      if (kid === null || kid === undefined) continue;
      node.appendChild(typeof kid === "string" || typeof kid === "number" ? document.createTextNode(String(kid)) : kid);
    }
    return node;
  }

  /* A data file as a classic script (fetch and XHR of file:// URLs are refused by browsers). */
  function load(src) {
    if (!loading[src]) {
      loading[src] = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = src;
        s.onload = resolve;
        s.onerror = function () { reject(new Error("cannot load " + src)); };
        document.head.appendChild(s);
      });
    }
    return loading[src];
  }

  function layer(name) {
    var found = null;
    window.ATLAS.layers.forEach(function (l) { if (l.name === name) found = l; });
    return found;
  }

  function unitHref(layerName, unit) { return "unit.html#" + encodeURIComponent(layerName) + "/" + unit; }
  function layerHref(layerName) { return "layer.html#layer=" + encodeURIComponent(layerName); }

  function fmt(v) {
    if (v === null || v === undefined) return "\u2014";
    if (Number.isInteger(v)) return String(v);
    return String(Number(v.toPrecision(6)));
  }

  function num(v) { return el("td", {"class": "num", "data-value": v === null ? "" : v, title: v === null ? "" : String(v), text: fmt(v)}); }

  /* One tile of a sprite sheet: a clipped box holding the sheet, shifted to the tile. */
  function tile(src, col, row, size) {
    var img = el("img", {src: src, alt: "", draggable: "false", style: {left: (-col * size) + "px", top: (-row * size) + "px"}});
    return el("div", {"class": "thumb", style: {width: size + "px", height: size + "px"}}, img);
  }

  /* A uint8 map (hex, row-major h x w) as a translucent heat canvas. */
  function heat(hex, h, w) {
    var canvas = el("canvas", {width: w, height: h});
    var ctx = canvas.getContext("2d");
    var data = ctx.createImageData(w, h);
    for (var i = 0; i < h * w; i++) {
      var v = parseInt(hex.substr(2 * i, 2), 16);
      data.data[4 * i] = 255; data.data[4 * i + 1] = Math.round(220 - v * 0.7); data.data[4 * i + 2] = 0;
      data.data[4 * i + 3] = Math.round(v * 0.9);
    }
    ctx.putImageData(data, 0, 0);
    return canvas;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  return {el: el, load: load, layer: layer, unitHref: unitHref, layerHref: layerHref, fmt: fmt, num: num, tile: tile,
          heat: heat, clear: clear};
})();
