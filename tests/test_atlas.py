"""``atlas``: the numbers on the unit pages are report's, a rebuild rewrites nothing, user strings stay data.

One small real store (10 sample images, efficientnet_lite0, blocks.3 with --spatial and bn2) is made once per
session and shared with tests/test_atlas_browser.py; its class names, category values and file names are
hostile (markup, quotes, &, #, %, spaces, non-ASCII).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_CSV

HOSTILE = "<script>alert(1)</script> \"q\" 'a' & #1 %20 é✓"
HOSTILE_CATEGORY = "<b>cats & \"dogs\"</b> #%"
HOSTILE_LAYER = "conv <i>#1</i> %2F & 'é'"
OPTIONS = {"permutations": 50, "k": 4, "n": 4}
COMMAND = "python -m neuroprobe atlas run.zarr --out site"


def real_store(tmp_path_factory) -> tuple[Path, Path]:
    """(store, csv): made once per session (the folder is shared by both atlas test modules)."""
    folder = tmp_path_factory.getbasetemp() / "atlas-real"
    store = folder / "run.zarr"
    if (folder / "ready").is_file():
        return store, folder / "labels.csv"
    import neuroprobe

    folder.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(SAMPLE_CSV)
    table = pd.concat([table.iloc[:5], table[table.class_index.between(151, 268)].iloc[:5]]).reset_index(drop=True)
    names = []
    for i, path in enumerate(table.path):
        name = f"images/{i} {'#%é &' if i % 3 == 0 else 'ok'} {'<x>' if i == 1 else ''}.jpg"
        (folder / "images").mkdir(exist_ok=True)
        shutil.copy(SAMPLE_CSV.parent / path, folder / name)
        names.append(name)
    table["path"] = names
    table.loc[[0, 6], "class_name"] = HOSTILE
    table["group"] = [HOSTILE_CATEGORY if i % 2 else "dog" for i in range(len(table))]
    table.to_csv(folder / "labels.csv", index=False)
    neuroprobe.extract("efficientnet_lite0", folder / "labels.csv", ["blocks.3", "bn2"], store, spatial=["blocks.3"],
                       batch_size=10, device="cpu", progress=False)
    (folder / "ready").touch()
    return store, folder / "labels.csv"


def synthetic_store(path: Path, units: int = 20, n: int = 12) -> Path:
    """A store of made-up values with no loadable model and a hostile layer name."""
    from neuroprobe.data import Manifest
    from neuroprobe.models.capture import LayerInfo
    from neuroprobe.store.layout import STATS, Store

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"path": [f"missing/{i} <b>.jpg" for i in range(n)], "class_index": np.arange(n) + 150,
                          "class_name": [HOSTILE if i % 4 == 0 else f"class {i}" for i in range(n)]})
    layers = {HOSTILE_LAYER: LayerInfo(HOSTILE_LAYER, "Synthetic", (units, 3, 3), "pre-activation: output", 1)}
    store = Store.create(path, Manifest(table, path.parent), layers, {"provenance": {"model": "synthetic"}}, n)
    mean = rng.normal(size=(n, units)).astype(np.float32)
    stats = np.stack([mean - 1, mean, mean + 1, np.abs(mean)])[[STATS.index(s) for s in STATS]]
    store.write_chunk(0, {HOSTILE_LAYER: stats}, {}, np.ones(n, bool), [""] * n)
    return path


def built_site(tmp_path_factory, name: str = "site", **options) -> Path:
    """The atlas of the real store with both categories (made once per session per name)."""
    from neuroprobe.atlas import build

    store, _ = real_store(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "atlas-real" / name
    if not (out / "index.html").is_file():
        build(store, out, categories=["dog", HOSTILE_CATEGORY], column="group", command=COMMAND, **(OPTIONS | options))
    return out


def chunk_records(site: Path, layer_id: str) -> dict[int, dict]:
    """unit -> its record, read back from the chunk scripts the pages load."""
    out = {}
    for path in sorted((site / "data" / layer_id).glob("c*.js")):
        text = path.read_text(encoding="utf-8")
        payload = json.loads(text[text.index("]=", text.index("ATLAS_CHUNKS[")) + 2:].rstrip().rstrip(";"))
        out.update({r["u"]: r | {"sprite": payload["sprite"]} for r in payload["units"]})
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return real_store(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return built_site(tmp_path_factory)


def test_unit_numbers_equal_report_tables(store, site, tmp_path):
    from neuroprobe.analysis.report import report

    units = pd.read_csv(site / "units.csv", keep_default_na=False, na_values=[""])
    records = chunk_records(site, "L0")
    for category in ("dog", HOSTILE_CATEGORY):
        report(store, tmp_path / "r", category, column="group", **OPTIONS)
        sel = pd.read_csv(tmp_path / "r" / "selectivity.csv", keep_default_na=False, na_values=[""])
        opp = pd.read_csv(tmp_path / "r" / "opponent.csv", keep_default_na=False, na_values=[""])
        for index, key in (("malakhova", f"malakhova[{category}]"), ("balanced", f"balanced[{category}]")):
            want = sel[sel["index"] == index].set_index(["layer", "unit"])["value"]
            got = units.set_index(["layer", "unit"])[key]
            np.testing.assert_allclose(got.loc[want.index], want, rtol=1e-12)
        want_p = sel[sel["index"] == "malakhova"].set_index(["layer", "unit"])["p"]
        np.testing.assert_allclose(units.set_index(["layer", "unit"])[f"p[{category}]"].loc[want_p.index], want_p)
        want_opp = opp.set_index(["layer", "unit"])
        got = units.set_index(["layer", "unit"])
        np.testing.assert_array_equal(got[f"opp+[{category}]"].loc[want_opp.index], want_opp["positive_in_category"])
        np.testing.assert_array_equal(got[f"opp-[{category}]"].loc[want_opp.index], want_opp["negative_in_category"])
        for rec in opp[opp.layer == "blocks.3"].itertuples():
            assert records[rec.unit]["opp"][category]["positive_in_category"] == rec.positive_in_category
    top = pd.read_csv(tmp_path / "r" / "topk.csv", keep_default_na=False, na_values=[""])
    morcos = sel[sel["index"] == "morcos"].set_index(["layer", "unit"])
    np.testing.assert_allclose(units.set_index(["layer", "unit"])["csi"].loc[morcos.index], morcos["value"])
    for unit in (0, 5, 79):
        for direction in ("top", "bottom"):
            want = top[(top.layer == "blocks.3") & (top.unit == unit) & (top.criterion == "mean") &
                       (top.direction == direction)].sort_values("rank")
            got = records[unit][direction]
            assert [e["i"] for e in got] == want["image"].tolist()
            np.testing.assert_allclose([e["v"] for e in got], want["value"])
            assert [e["l"] for e in got] == want["class_name"].astype(str).tolist()
    assert (units["store"] == os.path.relpath(store, site)).all() and (units["schema_version"] == 1).all()
    meta = json.loads((site / "units.json").read_text())
    assert meta["schema_version"] == 1 and len(meta["units"]) == 80 + 1280


def test_atlas_defaults_are_reports():
    from neuroprobe.cli import build_parser

    parser = build_parser()
    report = parser.parse_args(["report", "s", "--out", "o"])
    atlas = parser.parse_args(["atlas", "s", "--out", "o"])
    for option in ("stat", "normalization", "threshold", "permutations", "seed", "k", "n", "category_column",
                   "category_map", "layers", "allow_incomplete"):
        assert getattr(atlas, option) == getattr(report, option), option
    assert atlas.category == [report.category]
    assert parser.parse_args(["atlas", "s", "--out", "o", "--top-k", "3"]).k == 3


def test_rebuild_rewrites_nothing_and_redoes_only_a_changed_layer(store, site, tmp_path):
    from neuroprobe.atlas import build

    copy = site.parent / "rebuild"  # beside the site: the store's relative path is the same
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(site, copy)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    summary = build(store, copy, categories=["dog", HOSTILE_CATEGORY], column="group", command=COMMAND, **OPTIONS)
    assert summary["built"] == [] and summary["written"] == 0
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == before
    manifest = json.loads((copy / ".atlas" / "manifest.json").read_text())
    manifest["layers"]["L0"]["fingerprint"] = "stale"  # as after a kill in the middle of blocks.3
    (copy / ".atlas" / "manifest.json").write_text(json.dumps(manifest))
    summary = build(store, copy, categories=["dog", HOSTILE_CATEGORY], column="group", command=COMMAND, **OPTIONS)
    assert summary["built"] == ["blocks.3"] and summary["written"] == 0  # its content is equal: files kept


def test_output_is_offline_and_strings_are_data(site):
    for path in site.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8")
            assert "http://" not in text and "https://" not in text, path
            assert "fetch(" not in text and "XMLHttpRequest" not in text and "innerHTML" not in text, path
    for path in (site / "data").rglob("*.js"):
        text = path.read_text(encoding="utf-8")
        assert "<script" not in text and "</" not in text and "\u2028" not in text
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;cats &amp; &#34;dogs&#34;&lt;/b&gt; #%" in index and "<b>cats" not in index
    units = pd.read_csv(site / "units.csv", keep_default_na=False)
    assert HOSTILE in units["top_classes"].str.cat()


def test_script_json_and_urls_are_safe():
    from neuroprobe.atlas.site import assignment, script_json, url

    text = script_json({"a": "</script><!-- & \u2028 \u2029 >", "n": float("nan")})
    assert not set(text) & set("<>&\u2028\u2029")
    assert json.loads(text) == {"a": "</script><!-- & \u2028 \u2029 >", "n": None}
    assert assignment("X", "</script>", 1).decode().count("<") == 0
    assert url("a b#%/é", "3") == "a%20b%23%25%2F%C3%A9/3"


def test_inputs_occlusion_visualize_rf_and_synthesize(store, tmp_path):
    from PIL import Image

    from neuroprobe.atlas import build
    from neuroprobe.maps.occlusion_store import occlude

    few = store.parent / "first3.csv"  # the same paths, so that its maps match the store's images
    pd.read_csv(store.parent / "labels.csv").iloc[:3].to_csv(few, index=False)
    occlusion = occlude("efficientnet_lite0", few, "blocks.3", tmp_path / "occ.zarr", units=[0, 1], window=112,
                        stride=112, device="cpu")
    vis = tmp_path / "vis"
    (vis / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(vis / "images" / "unit0000_max.png")
    pd.DataFrame({"unit": [0], "direction": ["max"], "file": ["images/unit0000_max.png"]}).to_csv(
        vis / "visualize.csv", index=False)
    rf = tmp_path / "rf"
    rf.mkdir()
    pd.DataFrame({"layer": ["blocks.3", "blocks.3"], "unit": [0, 7], "empirical_rf_px": [37.5, float("nan")]}).to_csv(
        rf / "rf.csv", index=False)
    out = tmp_path / "site"
    build(store, out, layers=["blocks.3", "bn2"], units=[0], visualize=[f"blocks.3={vis}"], occlusion=occlusion,
          rf=rf, synthesize=True, synthesize_steps=2, profile="lite", device="cpu", **OPTIONS)
    records = chunk_records(out, "L0")
    assert records[0]["vis"] == {"max": "vis/L0/u0_max.jpg"} and (out / "vis/L0/u0_max.jpg").is_file()
    shown = {e["i"] for e in records[0]["top"]} & {0, 1, 2}
    assert {o["i"] for o in records[0]["occ"]} == shown and all(len(o["m"]) == 2 * o["h"] * o["w"] for o in records[0]["occ"])
    fields = [f["key"] for f in json.loads((out / "units.json").read_text())["fields"]]
    assert records[0]["v"][fields.index("erf")] == 37.5
    synthesized = chunk_records(out, "L1")
    assert set(synthesized[0]["vis"]) == {"max", "min"}  # --synthesize ran visualize for bn2's units
    assert all(not e["s"] for e in records[0]["bottom"])  # lite: bottom images as values only
    assert all((out / "img" / f"{e['i']}.jpg").is_file() for e in records[0]["bottom"])  # and their full images


def test_store_without_model_and_hostile_layer_name(tmp_path, caplog):
    from neuroprobe.atlas import build

    store = synthetic_store(tmp_path / "syn.zarr")
    with caplog.at_level(logging.INFO):
        summary = build(store, tmp_path / "site", permutations=0, k=3, n=3, column="class_name",
                        categories=[HOSTILE])
    assert "projected size" in caplog.text and "could not be loaded" in caplog.text
    assert summary["built"] == [HOSTILE_LAYER]
    records = chunk_records(tmp_path / "site", "L0")
    assert records[0]["top"][0]["b"] == [0, 0, 224, 224]  # no model: whole images
    assert "layer.html#layer=conv%20%3Ci%3E%231%3C%2Fi%3E%20%252F%20%26%20%27%C3%A9%27" in \
        (tmp_path / "site" / "index.html").read_text()


def test_cli_errors_are_one_line(store, tmp_path, capsys):
    from neuroprobe.cli import main

    assert main(["atlas", str(store), "--out", str(tmp_path / "a"), "--visualize", str(tmp_path)]) == 2
    assert "LAYER=DIR" in capsys.readouterr().err
    assert main(["atlas", str(store), "--out", str(tmp_path / "a"), "--occlusion", str(store), "--layers", "bn2"]) == 2
    assert "not an occlusion store" in capsys.readouterr().err
    assert main(["atlas", str(store), "--out", str(tmp_path / "a"), "--layers", "nope"]) == 2
    assert "stored layers" in capsys.readouterr().err
    assert main(["atlas", str(store), "--out", str(tmp_path / "a"), "--k", "0"]) == 2
