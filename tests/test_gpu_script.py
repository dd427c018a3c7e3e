"""benchmarks/gpu.sh, the one command for a lent GPU machine: its --dry-run rehearses every step on the CPU.

The dry run installs nothing (it validates the install command and, when present, the .whl set),
runs the GPU tests with NEUROPROBE_GPU_TESTS_DEVICE=cpu and every benchmark at toy size, and must
write the results file with every section, so that the first GPU run does not fail on a typo.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("install", "machine", "gpu-tests", "extract-fp32", "extract-bf16", "occlusion", "attribution", "retina",
         "alignment")
SECTIONS = ("## Steps", "## Machine", "## GPU tests", "## Extraction, fp32", "## Extraction, bf16", "## Occlusion",
            "## Attribution", "## Retina", "## Alignment")
RAW_FILES = ("gpu-results.md", "gpu-log.txt", "extract-fp32.json", "extract-bf16.json", "occlusion.json",
             "gpu-tests.xml")


def step_table(text: str) -> dict[str, str]:
    """{step: status} from the results file's steps table."""
    rows = re.findall(r"^\| ([a-z0-9-]+) \| ([^|]*) \|", text, flags=re.M)
    return {step: status.strip() for step, status in rows if step in STEPS}


def test_dry_run_passes_every_step_and_writes_every_section(tmp_path):
    # one test, one dry run: with pytest-xdist a module-scoped fixture would run once per worker
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env |= {"PYTHON": sys.executable, "GPU_RESULTS_DIR": str(tmp_path / "results"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    results = tmp_path / "results"
    report = results / "gpu-results.md"
    tail = (done.stdout + done.stderr)[-4000:]
    assert report.is_file(), f"no results file; output:\n{tail}"
    text = report.read_text()

    # every step passed, in order, and the script says so
    statuses = step_table(text)
    assert list(statuses) == list(STEPS), text[:2000]
    failed = {step: status for step, status in statuses.items() if status != "PASSED"}
    assert not failed, f"steps not passed: {failed}\n{tail}"
    assert done.returncode == 0, tail
    assert "DRY RUN on the CPU" in text

    # every section, each with its table rather than a "no results" line
    for section in SECTIONS:
        assert section in text, f"section {section!r} missing"
    assert "_No results" not in text
    for contender in ("bare forward contiguous", "bare forward channels_last", "neuroprobe decode=cpu",
                      "neuroprobe decode=gpu"):
        assert f"| {contender} |" in text, contender
    assert text.count("denominator = the faster bare forward pass") == 2      # fp32 and bf16
    assert "amp bf16" in text
    assert "| thingsvision |" in text or "thingsvision skipped:" in text       # measured, or a clear skip line
    assert "| neuroprobe (incremental) | layer3 |" in text and "| neuroprobe (dense) | layer3 |" in text \
        and "captum Occlusion" in text                                            # occlusion
    assert "| gradcam | pytorch-grad-cam |" in text and "| dff | pytorch-grad-cam |" in text   # attribution
    assert "| neuroprobe likelihood_maps |" in text and "authors-style loop" in text   # retina
    assert "scipy loop" in text and "CE + harmonization" in text                       # alignment
    assert "packages:" in text                                                   # the machine

    # what the device tool brings back from $OUT: at most 8 plain files, 16 MiB each, plain names
    names = sorted(p.name for p in results.iterdir())
    assert set(RAW_FILES) <= set(names), names
    assert len(names) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) and (results / n).is_file() for n in names)
    assert all((results / n).stat().st_size < 16 << 20 for n in names)


def test_tf_stub_stands_in_for_tensorflow():
    code = """
import sys
sys.path.insert(0, sys.argv[1])
import tf_stub
tf_stub.install()
import tensorflow as tf
import tensorflow.keras.applications as apps
from tensorflow.keras.layers import Lambda
gpus = tf.config.list_physical_devices("GPU")
assert not gpus and list(gpus) == [] and len(gpus) == 0
class Layer(tf.keras.layers.Layer):
    pass
assert Layer.__mro__[-1] is object and Lambda(lambda x: x) is Lambda
assert "tensorflow.keras.applications" in tf_stub.touched() and apps is sys.modules["tensorflow.keras.applications"]
import json
print(json.dumps(sys.modules["tensorflow"].__version__))
"""
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stub" in done.stdout
