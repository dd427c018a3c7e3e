"""Time of neuroprobe's attribution maps against the forward-pass floor and against Captum and pytorch-grad-cam.

One run, one process, one batch, one machine. The model is the offline pretrained EfficientNet-Lite0
(``neuroprobe.load_model("efficientnet_lite0")``: timm tf_efficientnet_lite0, eval mode), the batch the
``--batch`` (16) first images of ``data/sample/labels.csv`` read by ``neuroprobe.data.read_manifest`` +
``ImageDataset`` (the model's resize + center crop to 224 as uint8) and normalised by
``loaded.preprocessing.normalize``; targets = the model's predicted class of each image; the layer
methods use ``bn2`` (the last conv map, 1280 x 7 x 7, BatchNormAct2d: its output is after ReLU6).
Measured, every contender on the same normalised batch already on the device:

* ``forward``: the bare model under ``torch.no_grad()`` (no hooks);
* ``floor``: forward with autograd + ``torch.autograd.grad`` of the summed target logits to the input
  (no hooks): the least any input-gradient method can cost;
* ``gradient``: ``neuroprobe.maps.attribution.gradient`` vs Captum ``Saliency(model).attribute(x, target,
  abs=True)``, then max over channels as neuroprobe's map;
* ``guided``: ``guided_backprop`` vs Captum ``GuidedBackprop`` (then max |.| over channels). Captum
  overrides only ``nn.ReLU`` modules; EfficientNet-Lite0 has ReLU6 (33 modules, none nn.ReLU), so
  Captum's "guided" map here is the plain input gradient, while neuroprobe gates every activation.
  The timing is still comparable (the same forward + backward); the maps are not;
* ``smoothgrad``: ``smoothgrad(samples=S, noise=0.15, batch_size=S_b x B)`` vs Captum
  ``NoiseTunnel(Saliency).attribute(nt_type="smoothgrad", nt_samples=S, nt_samples_batch_size=S_b,
  stdevs=0.15 x the batch's mean value range, abs=True)``: the same S noisy copies of each image,
  ``S_b`` x B copies per forward/backward pass for both (``--samples`` 10, ``--samples-batch`` 4: passes
  of 64, 64 and 32 copies at B = 16). Different noise draws, so only the timing is comparable;
* ``gradcam``: ``gradcam(model, x, targets, "bn2")`` (ReLU, bilinear to 224) vs Captum
  ``LayerGradCam(model, model.bn2).attribute(x, target, relu_attributions=True)`` +
  ``LayerAttribution.interpolate(..., (224, 224), "bilinear")`` and vs pytorch-grad-cam
  ``GradCAM(model, target_layers=[model.bn2])(x, [ClassifierOutputTarget(c) ...])`` (its hooks are
  registered and removed inside the timed call, so they do not slow the other contenders down);
* ``dff``: ``dff(model, x, targets, "bn2", concepts=5)`` (HALS NMF on the device) vs pytorch-grad-cam
  ``DeepFeatureFactorization(model, target_layer=model.bn2, computation_on_concepts=model.classifier)
  (x, n_components=5)`` (scikit-learn NMF on numpy, then per-image rescaling to 224; on CUDA the head is
  wrapped to move pytorch-grad-cam's CPU concept tensor to the GPU, which it does not do itself);
* ``feedback`` and ``global perception`` (``--iterations`` 10): no peer library; reported against the
  floor (their least cost is iterations + 1 forward + backward passes).

Every contender is warmed up once (that call's result is the one checked for agreement), then the
contenders are timed ``--repeats`` (5) times, interleaved (one call each per round, the order reversed
every other round) so that background load touches all alike; smoothgrad, feedback and global
perception, which make 10-11 passes per call, only in the first ``--slow-repeats`` (3) rounds.
Reported: best and median wall img/s, img/s by process CPU time (all threads; ``time.process_time``)
of the best round, time / forward and time / floor, and for each peer the speed-up of neuroprobe (peer time / neuroprobe time, best rounds;
by wall and by CPU time). Times are wall-clock ``time.perf_counter`` with ``torch.cuda.synchronize``
at both ends on CUDA. On CPU ``neuroprobe.engine.malloc.keep_freed_memory()`` (the CLI's start-up mallopt) is
called first, so every contender runs under the same glibc malloc setting (NEUROPROBE_NO_MALLOPT=1 to
measure without).

Agreement (printed and written): max |neuroprobe - peer| / max |peer| of the maps where both compute
the same thing: gradient vs Saliency; gradcam vs LayerGradCam; gradcam (min-max scaled per image, as
pytorch-grad-cam returns it) vs GradCAM; Captum's guided vs neuroprobe's plain gradient (equal: no
ReLU overridden) and vs neuroprobe's guided (not equal). DFF: cosine similarity of the 5 concept
vectors after matching (Hungarian), and the NMF relative errors. SmoothGrad: correlation only.

``--threads`` defaults to 2 (both cores of the dev machine); on a shared machine use ``--threads 1``:
torch's OpenMP threads otherwise wait for a descheduled sibling and the rates collapse (RESULTS.md).
The table's "others' CPU" column says how many cores other processes took while each row was timed.

Examples (a full run took 3 min 10 s on the quiet 2-core dev machine, longer when it is shared;
``--quick`` ~10-40 s)::

    .venv/bin/python benchmarks/attribution.py                     # writes benchmarks/results_attribution.md
    .venv/bin/python benchmarks/attribution.py --quick --out /tmp/attribution.md
    .venv/bin/python benchmarks/attribution.py --threads 1          # a shared machine
    .venv/bin/python benchmarks/attribution.py --device cuda --batch 32 --out /tmp/attribution_gpu.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "sample" / "labels.csv"
LAYER = "bn2"


# -- setup ----------------------------------------------------------------------------------------------
def load_batch(loaded, count: int, device):
    """The ``count`` first images of the embedded sample, as the model's normalised input on ``device``."""
    import torch

    from neuroprobe.data import ImageDataset, read_manifest

    manifest = read_manifest(DATA)
    if count > len(manifest):
        raise SystemExit(f"--batch {count}: {DATA} lists only {len(manifest)} images")
    dataset = ImageDataset(manifest, loaded.preprocessing)
    items = [dataset[i] for i in range(count)]
    bad = [reason for _, _, ok, reason in items if not ok]
    if bad:
        raise SystemExit(f"unreadable sample image(s): {bad}")
    return loaded.preprocessing.normalize(torch.stack([image for _, image, _, _ in items]).to(device))


def busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (every core; /proc/stat), None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_rss_gib() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux) in GiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Clock:
    """Wall and process CPU time of a region, synchronising CUDA at both ends, and the CPU that other
    processes used meanwhile (in cores: machine busy time from /proc/stat minus ours, over wall time)."""

    def __init__(self, device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0
        self.others = float("nan")

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self._busy = busy_seconds()
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall = time.perf_counter() - self._t
        self.cpu = time.process_time() - self._c
        busy = busy_seconds()
        if busy is not None and self._busy is not None and self.wall > 0:
            self.others = max(0.0, (busy - self._busy - self.cpu) / self.wall)


# -- contenders -----------------------------------------------------------------------------------------
def contenders(model, x, targets, args) -> list[dict]:
    """(group, library, what, call) of every timed contender; call() returns its map(s)."""
    import torch
    from captum.attr import (
        GuidedBackprop,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Saliency,
    )
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        DeepFeatureFactorization,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from neuroprobe.maps import attribution, dff, feedback

    layer = getattr(model, LAYER)
    size = tuple(x.shape[-2:])
    per_pass = args.samples_batch * len(x)
    value_range = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean().item()
    stdev = args.noise * value_range      # Captum takes one stdev per input tensor; neuroprobe one per image

    def forward():
        with torch.no_grad():
            return model(x)

    def floor():
        inputs = x.detach().requires_grad_(True)
        with torch.enable_grad():
            scores = model(inputs).gather(1, targets[:, None])
        return torch.autograd.grad(scores.sum(), inputs)[0]

    def captum_saliency():
        return Saliency(model).attribute(x, target=targets, abs=True).amax(1, keepdim=True)

    def captum_guided():
        return GuidedBackprop(model).attribute(x, target=targets)

    def captum_smoothgrad():
        attr = NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=args.samples, nt_samples_batch_size=args.samples_batch,
            stdevs=stdev, target=targets, abs=True)
        return attr.amax(1, keepdim=True)

    def captum_gradcam():
        cam = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(cam, size, "bilinear")

    def pgc_gradcam():
        with GradCAM(model=model, target_layers=[layer]) as cam:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])

    # pytorch-grad-cam hands the head a CPU tensor (torch.from_numpy): on a GPU the head needs it moved
    head = model.classifier if x.device.type == "cpu" else (lambda concepts: model.classifier(concepts.to(x.device)))

    def pgc_dff():
        factorization = DeepFeatureFactorization(model=model, target_layer=layer, computation_on_concepts=head)
        try:
            return factorization(x, n_components=args.concepts)
        finally:
            factorization.activations_and_grads.release()

    with torch.no_grad():
        top4 = model(x).topk(4, dim=1).indices               # (B, 4): four classes per image

    def captum_saliency_4():
        return [Saliency(model).attribute(x, target=top4[:, t], abs=True).amax(1, keepdim=True) for t in range(4)]

    def captum_gradcam_4():
        return [LayerAttribution.interpolate(LayerGradCam(model, layer).attribute(x, target=top4[:, t],
                                                                                   relu_attributions=True), size,
                                             "bilinear") for t in range(4)]

    def pgc_gradcam_4():
        with GradCAM(model=model, target_layers=[layer]) as cam:
            return [cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in top4[:, t]]) for t in range(4)]

    out = [
        ("forward", "bare", "model(x) under no_grad, no hooks", forward),
        ("floor", "bare", "forward + autograd.grad(target logits -> input), no hooks", floor),
        ("gradient", "neuroprobe", "maps.attribution.gradient", lambda: attribution.gradient(model, x, targets)),
        ("gradient", "Captum", "Saliency(abs=True) + max over channels", captum_saliency),
        ("guided", "neuroprobe", "maps.attribution.guided_backprop", lambda: attribution.guided_backprop(model, x, targets)),
        ("guided", "Captum", "GuidedBackprop (overrides no ReLU6: plain gradient here)", captum_guided),
        ("smoothgrad", "neuroprobe", f"maps.attribution.smoothgrad(samples={args.samples}, batch_size={per_pass})",
         lambda: attribution.smoothgrad(model, x, targets, samples=args.samples, noise=args.noise, batch_size=per_pass)),
        ("smoothgrad", "Captum", (f"NoiseTunnel(Saliency), nt_samples={args.samples}, nt_samples_batch_size="
                                  f"{args.samples_batch}"), captum_smoothgrad),
        ("gradcam", "neuroprobe", f"maps.attribution.gradcam('{LAYER}')",
         lambda: attribution.gradcam(model, x, targets, LAYER)),
        ("gradcam", "Captum", f"LayerGradCam(model.{LAYER}, relu) + interpolate bilinear", captum_gradcam),
        ("gradcam", "pytorch-grad-cam", f"GradCAM(target_layers=[model.{LAYER}])", pgc_gradcam),
        ("dff", "neuroprobe", f"maps.dff.dff('{LAYER}', concepts={args.concepts})",
         lambda: dff.dff(model, x, targets, LAYER, concepts=args.concepts)),
        ("dff", "pytorch-grad-cam", f"DeepFeatureFactorization(model.{LAYER}, n_components={args.concepts})", pgc_dff),
        ("gradient, 4 classes", "neuroprobe", "maps.attribution.gradient, (B, 4) targets: one vmapped backward",
         lambda: attribution.gradient(model, x, top4)),
        ("gradient, 4 classes", "Captum", "Saliency, one call per class", captum_saliency_4),
        ("gradcam, 4 classes", "neuroprobe", f"maps.attribution.gradcam('{LAYER}'), (B, 4) targets",
         lambda: attribution.gradcam(model, x, top4, LAYER)),
        ("gradcam, 4 classes", "Captum", "LayerGradCam, one call per class", captum_gradcam_4),
        ("gradcam, 4 classes", "pytorch-grad-cam", "GradCAM, one call per class", pgc_gradcam_4),
        ("feedback", "neuroprobe", f"maps.feedback.feedback(iterations={args.iterations})",
         lambda: feedback.feedback(model, x, targets, iterations=args.iterations)),
        ("global perception", "neuroprobe", f"maps.feedback.global_perception(iterations={args.iterations})",
         lambda: feedback.global_perception(model, x, targets, iterations=args.iterations)),
    ]
    rows = [{"group": g, "library": lib, "what": what, "call": call} for g, lib, what, call in out]
    keep = set(args.methods or [r["group"] for r in rows]) | {"forward", "floor"}
    return [r for r in rows if r["group"] in keep]


def run_all(rows: list[dict], model, args, device) -> dict:
    """Warm up every contender once (keeping its result), then ``repeats`` interleaved timed rounds."""
    import torch

    results = {}
    for row in rows:
        key = (row["group"], row["library"])
        t = time.perf_counter()
        results[key] = {"warm": row["call"](), "wall": [], "cpu": [], "others": []}
        model.zero_grad(set_to_none=True)          # pytorch-grad-cam's loss.backward() fills parameter .grad
        print(f"  warm-up {row['group']:<17} {row['library']:<16} {time.perf_counter() - t:6.2f} s; peak RSS so far "
              f"{peak_rss_gib():.1f} GiB", flush=True)
    for round_ in range(max(args.repeats, args.slow_repeats)):
        active = [r for r in rows if round_ < (args.slow_repeats if r["group"] in SLOW else args.repeats)]
        order = active if round_ % 2 == 0 else active[::-1]
        for row in order:
            clock = Clock(device)
            with clock:
                row["call"]()
            model.zero_grad(set_to_none=True)
            key = (row["group"], row["library"])
            results[key]["wall"].append(clock.wall)
            results[key]["cpu"].append(clock.cpu)
            results[key]["others"].append(clock.others)
        line = ", ".join(f"{r['group']}/{r['library']} {results[(r['group'], r['library'])]['wall'][-1]:.2f}"
                         for r in active)
        others = np.nanmean([results[(r["group"], r["library"])]["others"][-1] for r in active])
        print(f"  round {round_ + 1} (s; others' CPU {others:.2f} cores): {line}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


# -- agreement ------------------------------------------------------------------------------------------
def _np(t):
    import torch

    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def rel_diff(ours, theirs) -> float:
    ours, theirs = _np(ours).astype(np.float64), _np(theirs).astype(np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def agreement(results: dict, model, x, targets, args) -> list[str]:
    """One line per pair that should (or, for guided, should not) give the same map."""

    lines = []
    get = lambda group, lib: results.get((group, lib), {}).get("warm")
    if get("gradient", "neuroprobe") is not None and get("gradient", "Captum") is not None:
        ours, theirs = get("gradient", "neuroprobe"), get("gradient", "Captum")
        lines.append(f"gradient vs Captum Saliency (max over channels of |grad|): max |diff| / max = "
                     f"{rel_diff(ours.map[:, 0], theirs[:, 0]):.2e}")
    if get("guided", "Captum") is not None:
        theirs = get("guided", "Captum")
        parts = []
        if get("gradient", "neuroprobe") is not None:
            parts.append(f"vs neuroprobe's plain input gradient {rel_diff(get('gradient', 'neuroprobe').raw[:, 0], theirs):.2e} "
                         "(Captum overrides no ReLU6, so its guided backprop IS the plain gradient)")
        if get("guided", "neuroprobe") is not None:
            ours = get("guided", "neuroprobe")
            parts.append(f"vs neuroprobe guided (|.| max over channels) "
                         f"{rel_diff(ours.map[:, 0], _np(theirs).__abs__().max(1)):.2e} (different by design)")
        lines.append("Captum GuidedBackprop, max |diff| / max: " + "; ".join(parts))
    if get("smoothgrad", "neuroprobe") is not None and get("smoothgrad", "Captum") is not None:
        ours, theirs = _np(get("smoothgrad", "neuroprobe").map[:, 0]), _np(get("smoothgrad", "Captum")[:, 0])
        corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, theirs)]
        lines.append(f"smoothgrad vs Captum NoiseTunnel: different noise draws, timing only; per-image Pearson r of "
                     f"the maps: median {np.median(corr):.3f}, min {np.min(corr):.3f}")
    ours = get("gradcam", "neuroprobe")
    if ours is not None and get("gradcam", "Captum") is not None:
        lines.append(f"gradcam vs Captum LayerGradCam (ReLU, bilinear 224): max |diff| / max = "
                     f"{rel_diff(ours.map[:, 0], get('gradcam', 'Captum')[:, 0]):.2e}")
    if ours is not None and get("gradcam", "pytorch-grad-cam") is not None:
        m = _np(ours.map[:, 0]).astype(np.float64)
        low, high = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        scaled = (m - low) / (high - low + 1e-7)
        lines.append(f"gradcam (min-max scaled per image) vs pytorch-grad-cam GradCAM (its [0, 1] output, cv2 "
                     f"resize): max |diff| / max = {rel_diff(scaled, get('gradcam', 'pytorch-grad-cam')):.2e}")
    if get("dff", "neuroprobe") is not None and get("dff", "pytorch-grad-cam") is not None:
        lines.append(dff_agreement(get("dff", "pytorch-grad-cam"), model, x, args))
    for group in ("feedback", "global perception"):
        att = get(group, "neuroprobe")
        if att is not None:
            lines.append(f"{group}: {att.reduction}")
    return lines


def dff_agreement(theirs, model, x, args) -> str:
    """Cosine similarity of the concept vectors W (channel offset removed) of the two factorizations,
    concepts paired by the Hungarian method, and neuroprobe's NMF fit error."""
    import torch
    from scipy.optimize import linear_sum_assignment

    from neuroprobe.maps.dff import factorize
    from neuroprobe.models.capture import Capture

    fact = factorize(model, x, LAYER, args.concepts)              # the same call dff() makes (seed 0)
    ours = _np(fact.concepts).astype(np.float64)                  # (channels, K)
    peer = np.asarray(theirs[0], dtype=np.float64) - _np(fact.offset)   # pytorch-grad-cam returns W + offset
    a = ours / np.linalg.norm(ours, axis=0, keepdims=True)
    b = peer / np.linalg.norm(peer, axis=0, keepdims=True)
    cos = a.T @ b
    rows, cols = linear_sum_assignment(-cos)
    # the peer's fit: its dff() on the same activations (deterministic: random_state=0) gives H as well
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import (
        dff as peer_dff,
    )

    values = {}
    with torch.no_grad(), Capture(model, [LAYER], values.__setitem__, post_activation=True) as capture:
        capture.run(x)
    activation = values[LAYER].float().cpu().numpy()
    matrix = activation.transpose(1, 0, 2, 3).reshape(activation.shape[1], -1).astype(np.float64)
    shifted = matrix - matrix.min(axis=1, keepdims=True)
    w_peer, h_peer = peer_dff(activation.copy(), n_components=args.concepts)
    w_peer = w_peer - matrix.min(axis=1)[:, None]
    h_peer = h_peer.transpose(1, 0, 2, 3).reshape(args.concepts, -1)
    peer_error = np.linalg.norm(shifted - w_peer @ h_peer) / np.linalg.norm(shifted)
    return (f"dff vs pytorch-grad-cam DFF (both NMF from a seed-0 random start, different solvers: HALS on the "
            f"device, up to 400 iterations, tol 1e-5, vs scikit-learn 'cd', max_iter 200, tol 1e-4): cosine of the "
            f"paired concept vectors (offset removed) {', '.join(f'{v:.4f}' for v in sorted(cos[rows, cols]))}; "
            f"NMF relative error ||V - WH|| / ||V||: neuroprobe {fact.relative_error:.4f}, pytorch-grad-cam "
            f"{peer_error:.4f}")


# -- reporting ------------------------------------------------------------------------------------------
def machine_info(device) -> dict:
    from importlib.metadata import version

    import captum
    import pytorch_grad_cam  # noqa: F401
    import sklearn
    import timm
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    info = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "memory": memory, "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "captum": captum.__version__,
            "grad_cam": version("grad-cam"), "sklearn": sklearn.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg()), "git": git_state()}
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu})"
    return info


def git_state() -> str:
    """The commit measured and whether neuroprobe/ had uncommitted changes (which files)."""
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False).stdout.rstrip()

    head = git("log", "-1", "--format=%h %s") or "unknown"
    dirty = git("status", "--porcelain", "--", "neuroprobe").splitlines()
    return (f"neuroprobe: commit '{head}'" + (f"; uncommitted changes under neuroprobe/: "
            f"{', '.join(line[3:] for line in dirty)}" if dirty else "; no uncommitted changes under neuroprobe/"))


def table_rows(rows: list[dict], results: dict, batch: int) -> list[dict]:
    best = {k: min(r["wall"]) for k, r in results.items()}
    best_cpu = {k: r["cpu"][int(np.argmin(r["wall"]))] for k, r in results.items()}
    others = {k: r["others"][int(np.argmin(r["wall"]))] for k, r in results.items()}
    fwd, flo = best[("forward", "bare")], best[("floor", "bare")]
    out = []
    for row in rows:
        key = (row["group"], row["library"])
        r = results[key]
        entry = {"group": row["group"], "library": row["library"], "what": row["what"],
                 "rate": batch / best[key], "median": batch / statistics.median(r["wall"]),
                 "cpu_rate": batch / best_cpu[key], "cpu_per_wall": best_cpu[key] / best[key],
                 "others": others[key], "others_median": statistics.median(r["others"]),
                 "x_forward": best[key] / fwd, "x_floor": best[key] / flo, "speedup": None, "speedup_cpu": None}
        if row["library"] not in ("neuroprobe", "bare"):
            ours = ("neuroprobe" if (row["group"], "neuroprobe") in results else None)
            if ours:
                k = (row["group"], "neuroprobe")
                entry["speedup"] = best[key] / best[k]
                entry["speedup_cpu"] = best_cpu[key] / best_cpu[k]
        out.append(entry)
    return out


def format_table(table: list[dict]) -> str:
    head = ["method", "contender", "img/s best (median)", "img/s by CPU time", "CPU s / wall s",
            "others' CPU (cores)", "x forward", "x floor", "neuroprobe speed-up (wall / CPU)", "call"]
    body = []
    for r in table:
        speed = "" if r["speedup"] is None else f"**{r['speedup']:.2f}x** / {r['speedup_cpu']:.2f}x"
        body.append([r["group"], r["library"], f"{r['rate']:.1f} ({r['median']:.1f})", f"{r['cpu_rate']:.1f}",
                     f"{r['cpu_per_wall']:.2f}", f"{r['others']:.2f} ({r['others_median']:.2f})", f"{r['x_forward']:.2f}", f"{r['x_floor']:.2f}", speed,
                     f"`{r['what']}`" if r["library"] != "bare" else r["what"]])
    return "\n".join("| " + " | ".join(line) + " |" for line in [head, ["---"] * len(head), *body])


def summary_lines(args, info: dict, malloc: str) -> list[str]:
    gpu = info["device_name"] if info["device"].startswith("cuda") else "no GPU used"
    return [
        f"command: `{' '.join([os.path.relpath(sys.executable, REPO), *sys.argv])}`",
        (f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']:.1f} GiB RAM; {gpu}; device "
         f"{info['device']} ({info['device_name']}); torch threads {info['threads']}; load average at start "
         f"{info['load_start']}, at end {info['load_end']}; peak RSS of the process {info['peak_rss']:.1f} GiB"),
        (f"python {info['python']}, torch {info['torch']}, timm {info['timm']}, captum {info['captum']}, "
         f"grad-cam {info['grad_cam']}, scikit-learn {info['sklearn']}; malloc: {malloc}"),
        info["git"],
        (f"model: efficientnet_lite0 (offline pretrained timm tf_efficientnet_lite0), eval; layer methods on "
         f"`{LAYER}` (1280x7x7, post-ReLU6); batch {args.batch}: the first {args.batch} images of "
         f"data/sample/labels.csv, 224x224, targets = predicted class"),
        (f"smoothgrad: {args.samples} samples (10 keeps the run short; cost is linear in samples), noise "
         f"{args.noise} (neuroprobe: x each image's range; Captum: one stdev = {args.noise} x the batch's mean "
         f"range), {args.samples_batch * args.batch} copies per pass for both; feedback / global perception "
         f"{args.iterations} iterations; DFF {args.concepts} concepts"),
        (f"timing: one warm-up call each, then {args.repeats} interleaved rounds (order reversed every other "
         f"round; smoothgrad, feedback and global perception in the first {args.slow_repeats} only); img/s from the best round (median in parentheses); 'img/s by CPU time' = batch / process "
         f"CPU seconds (all threads) of that round; x forward / x floor = time / the best forward (no grad) / "
         f"floor (forward + backward to the input) time; speed-up = peer time / neuroprobe time; others' CPU = cores "
         f"other processes kept busy during the best round (median round in parentheses; /proc/stat)"),
    ]


def write_out(path: str, args, info, table, lines, checks) -> None:
    title = f"# Attribution maps: neuroprobe vs the floor vs Captum and pytorch-grad-cam ({'quick' if args.quick else 'full'} run)\n"
    text = "\n".join([title, f"## {info['date']}", "", *[f"- {line}" for line in lines], "",
                      format_table(table), "", "Agreement of the maps (warm-up calls):", "",
                      *[f"- {c}" for c in checks], ""])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


# -- main -----------------------------------------------------------------------------------------------
GROUPS = ("gradient", "guided", "smoothgrad", "gradcam", "dff", "gradient, 4 classes", "gradcam, 4 classes", "feedback",
          "global perception")
SLOW = ("smoothgrad", "feedback", "global perception")      # many passes per call: timed --slow-repeats times


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="images per call (default %(default)s; at most 40)")
    p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (default %(default)s)")
    p.add_argument("--slow-repeats", type=int, default=3,
                   help="timed rounds of smoothgrad, feedback and global perception, which make many passes per "
                        "call (default %(default)s; they join the first rounds)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default %(default)s)")
    p.add_argument("--samples", type=int, default=10, help="SmoothGrad noisy copies per image (default %(default)s)")
    p.add_argument("--samples-batch", type=int, default=4,
                   help="SmoothGrad samples per pass: Captum's nt_samples_batch_size; neuroprobe's batch_size = "
                        "this x --batch (default %(default)s)")
    p.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise level (default %(default)s)")
    p.add_argument("--iterations", type=int, default=10,
                   help="feedback / global perception gate iterations (default %(default)s)")
    p.add_argument("--concepts", type=int, default=5, help="DFF concepts (default %(default)s)")
    p.add_argument("--methods", nargs="*", choices=GROUPS, default=None,
                   help="only these methods (forward and floor always run; default: all)")
    p.add_argument("--quick", action="store_true", help="check the script: batch 4, 1 round, 2 iterations")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results_attribution.md"),
                   help="Markdown file to write (overwritten; default %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.slow_repeats, args.iterations = 4, 1, 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from neuroprobe import load_model
    from neuroprobe.engine.malloc import keep_freed_memory

    warnings.filterwarnings("ignore")          # Captum's GuidedBackprop / scikit-learn convergence warnings
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if device.type == "cpu":
        applied = keep_freed_memory()
        malloc = ("neuroprobe.engine.malloc.keep_freed_memory() applied at start (mallopt: mmap off, trim threshold "
                  "2 GiB)" if applied else
                  "keep_freed_memory() NOT applied (NEUROPROBE_NO_MALLOPT set or not glibc): default glibc")
    else:
        malloc = "default glibc (CUDA run)"
    torch.set_num_threads(args.threads)
    info = machine_info(device)
    print(f"{info['cpu']}, {info['cores']} cores; torch {info['torch']}, {info['threads']} thread(s); device "
          f"{device} ({info['device_name']}); load {info['load_start']}\nmalloc: {malloc}", flush=True)

    loaded = load_model("efficientnet_lite0")
    model = loaded.module.to(device).eval()
    x = load_batch(loaded, args.batch, device)
    with torch.no_grad():
        targets = model(x).argmax(1)
    print(f"batch {tuple(x.shape)}, targets {targets.tolist()}", flush=True)

    rows = contenders(model, x, targets, args)
    results = run_all(rows, model, args, device)
    checks = agreement(results, model, x, targets, args)
    info["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    info["peak_rss"] = peak_rss_gib()
    table = table_rows(rows, results, args.batch)
    lines = summary_lines(args, info, malloc)
    print()
    print("\n".join(f"- {line}" for line in lines))
    print()
    print(format_table(table))
    print()
    print("\n".join(f"- {c}" for c in checks))
    if args.out:
        write_out(args.out, args, info, table, lines, checks)
        print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
