"""The unit atlas: a static site with one page per unit of a store, opened from ``file://``.

Lives here: ``collect`` (the numbers per unit, from the same :func:`neuroprobe.analysis.analyze` call
that ``report`` makes), ``peaks`` (where each top image drives a unit most: stored ``--spatial`` maps or one
pass of the model), ``crops`` (receptive-field crops, full images and sprite sheets), ``inputs``
(optional inputs: ``visualize`` folders, occlusion stores, ``rf`` folders), ``site`` (writing data
chunks and pages only when their content changed, the manifest that makes a rebuild incremental),
``build`` (the steps in order) and ``templates/`` (HTML, CSS and JS shipped as package data).

May import: ``neuroprobe.analysis``, ``neuroprobe.maps``, ``neuroprobe.synthesis``, ``neuroprobe.engine``,
``neuroprobe.store``, ``neuroprobe.models``, ``neuroprobe.data``, ``neuroprobe.progress``,
``neuroprobe.errors``, ``neuroprobe.version``. Nothing imports it but ``neuroprobe.cli``.
"""
from __future__ import annotations

from .build import build

__all__ = ["build"]
