"""The engine: images in, pooled pre-activations out, batch after batch, into a store.

Lives here: ``extract`` (the orchestration, one screen), ``loader`` and ``decode`` (batches decoded
ahead of the model, on the CPU or the device), ``reduce`` (pooling on the device), ``writer`` (the
background chunk writer), ``distributed`` (torchrun ranks), ``stopping`` (SIGTERM/SIGINT), ``device``
(device, autocast, memory format, workers), ``malloc`` (glibc settings for CPU inference) and
``provenance`` (the model a store was made with). The progress meter every long job uses is one level
down, in :mod:`neuroprobe.progress`.

May import: ``neuroprobe.errors``, ``neuroprobe.progress``, ``neuroprobe.data``, ``neuroprobe.models`` and
``neuroprobe.store``;
never the capabilities above (analysis, maps, retina, ...).
"""
from .extract import extract, pool_images

__all__ = ["extract", "pool_images"]
