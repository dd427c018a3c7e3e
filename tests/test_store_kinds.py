"""--overwrite is never a trap: a store of another kind is refused in one line and left byte for byte as it was.

One real store of each kind (extraction, occlusion, saliency, likelihood) is made from two sample images;
then every writer is pointed at every store of another kind, with and without --overwrite.
"""
from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pandas as pd
import pytest

from neuroprobe import NeuroprobeError, extract, load_model
from neuroprobe.maps.occlusion_store import occlude
from neuroprobe.maps.saliency_store import saliency
from neuroprobe.retina.likelihood import likelihood_maps
from neuroprobe.store.kinds import KINDS, store_kind

WRITERS = {
    "extraction": lambda model, csv, out, **kw: extract(model, csv, ["blocks.1"], out, chunk_size=2, progress=False,
                                                         device="cpu", **kw),
    "occlusion": lambda model, csv, out, **kw: occlude(model, csv, "blocks.1", out, units=[0], window=56, stride=56,
                                                       device="cpu", **kw),
    "saliency": lambda model, csv, out, **kw: saliency(model, csv, out, "gradient", batch_size=2, device="cpu", **kw),
    "likelihood": lambda model, csv, out, **kw: likelihood_maps(model, csv, out, layout="grid", n=2, view="crop",
                                                                batch_size=2, device="cpu", **kw),
}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory, sample_csv):
    folder = tmp_path_factory.mktemp("kinds")
    table = pd.read_csv(sample_csv).iloc[:2]
    table["path"] = [str((sample_csv.parent / p).resolve()) for p in table.path]
    csv = folder / "two.csv"
    table.to_csv(csv, index=False)
    model = load_model("efficientnet_lite0")
    stores = {kind: Path(str(write(model, csv, folder / f"{kind}.zarr"))) for kind, write in WRITERS.items()}
    return model, csv, stores


def test_each_writer_makes_its_own_kind(made):
    _, _, stores = made
    assert {kind: store_kind(path) for kind, path in stores.items()} == {kind: kind for kind in KINDS}


@pytest.mark.parametrize("existing,writer", [pair for pair in itertools.permutations(KINDS, 2)])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_store_of_another_kind_is_refused_and_kept(made, existing, writer, overwrite):
    model, csv, stores = made
    before = _snapshot(stores[existing])
    with pytest.raises(NeuroprobeError) as caught:
        WRITERS[writer](model, csv, stores[existing], overwrite=overwrite)
    message = str(caught.value)
    assert "\n" not in message
    article = "an" if existing[0] in "aeiou" else "a"
    assert f"is {article} {existing} store" in message and "choose another --out" in message
    assert _snapshot(stores[existing]) == before


@pytest.mark.parametrize("writer", KINDS)
def test_a_folder_that_is_no_store_is_refused_even_with_overwrite(made, writer, tmp_path):
    model, csv, _ = made
    (tmp_path / "notes.txt").write_text("my thesis")
    with pytest.raises(NeuroprobeError, match="non-empty folder that is not a store"):
        WRITERS[writer](model, csv, tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "my thesis"


def test_occlude_overwrite_on_an_extraction_store_says_one_line_and_keeps_it(made, capsys):
    from neuroprobe.cli import main

    _, csv, stores = made
    before = _snapshot(stores["extraction"])
    code = main(["occlude", "--layer", "blocks.1", "--units", "0", "--window", "56", "--stride", "56", "--device",
                 "cpu", "--data", str(csv), "--out", str(stores["extraction"]), "--overwrite", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("neuroprobe: error: ") and "is an extraction store, not an occlusion store" in err[-1]
    assert _snapshot(stores["extraction"]) == before
