"""Where a store lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ``file://``), opened one way.

Every command and library function that reads or writes a store goes through :func:`open_group` or
:class:`Location`, so a URL works wherever a path does. Credentials and endpoints come from the
filesystem's own configuration (for S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_ENDPOINT_URL`` or ``~/.aws``; for any protocol: fsspec's config, e.g. ``FSSPEC_S3_ENDPOINT_URL``).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zarr

from ..errors import NeuroprobeError

log = logging.getLogger(__name__)

PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
PARTIAL_MARKER = ".neuroprobe-partial"  # uploaded first, removed last: a creation that was killed


@dataclass(frozen=True)
class Location:
    """A store's place: ``path`` for a local folder (``file://`` URLs included), else the fsspec ``url``."""

    url: str
    path: Path | None

    @classmethod
    def of(cls, where: "str | Path | Location") -> "Location":
        if isinstance(where, Location):
            return where
        text = str(where)
        if isinstance(where, Path) or "://" not in text:
            return cls(text, Path(where))
        if text.startswith("file://"):
            return cls(text, Path(text[len("file://"):]))
        return cls(text.rstrip("/"), None)

    @property
    def remote(self) -> bool:
        return self.path is None

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0] if self.remote else "file"

    def __str__(self) -> str:
        return self.url if self.remote else str(self.path)

    def __fspath__(self) -> str:  # lets h5py, xarray and os.fspath take a local Location
        return str(self)

    # -- zarr --------------------------------------------------------------------------------------------
    def store(self, read_only: bool = True) -> zarr.abc.store.Store:
        """The zarr store object for this place (LocalStore, or FsspecStore for a URL)."""
        if not self.remote:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        with self.errors():
            return zarr.storage.FsspecStore.from_url(self.url, read_only=read_only)

    def open_group(self, mode: str = "r") -> zarr.Group:
        with self.errors():
            return zarr.open_group(self.store(read_only=mode == "r"), mode=mode)

    # -- the filesystem ------------------------------------------------------------------------------------
    def filesystem(self):
        """(fsspec filesystem, path inside it) without cached listings: another process may have written."""
        import fsspec

        with self.errors():
            fs, path = fsspec.core.url_to_fs(self.url)
        fs.invalidate_cache()
        return fs, path

    def exists(self, key: str = "") -> bool:
        """Whether ``key`` (a file below the store, or the store itself when empty) exists."""
        if not self.remote:
            return (self.path / key).exists() if key else self.path.exists()
        fs, path = self.filesystem()
        with self.errors():
            return fs.exists(f"{path}/{key}" if key else path)

    def is_store(self) -> bool:
        return self.exists("zarr.json")

    def is_partial(self) -> bool:
        """A remote creation that was killed before its root ``zarr.json`` arrived."""
        return self.remote and not self.is_store() and self.exists(PARTIAL_MARKER)

    def is_empty(self) -> bool:
        if not self.remote:
            return not self.path.exists() or not any(self.path.iterdir())
        fs, path = self.filesystem()
        with self.errors():
            return not fs.exists(path) or not fs.ls(path)

    def remove(self) -> None:
        """Delete the store (every object under the prefix)."""
        if not self.remote:
            import shutil

            shutil.rmtree(self.path)
            return
        fs, path = self.filesystem()
        with self.errors():
            if fs.exists(path):
                fs.rm(path, recursive=True)

    def publish(self, folder: Path) -> None:
        """Upload a layout built in the local ``folder``: a marker first, the root ``zarr.json`` last.

        Object stores have no atomic rename; until the root metadata arrives the prefix is not a
        store, and the marker tells a later run that the leftovers are its own to remove.
        """
        fs, path = self.filesystem()
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        root = folder / "zarr.json"
        with self.errors():
            fs.pipe_file(f"{path}/{PARTIAL_MARKER}", b"")
            for item in [p for p in files if p != root] + [root]:
                fs.put_file(str(item), f"{path}/{item.relative_to(folder).as_posix()}")
            fs.rm_file(f"{path}/{PARTIAL_MARKER}")

    def check_writable(self) -> None:
        """A one-line error now rather than a traceback later: the bucket must exist and be reachable."""
        if not self.remote:
            return
        fs, path = self.filesystem()
        bucket = path.split("/", 1)[0]
        with self.errors():
            if not fs.exists(bucket):
                raise NeuroprobeError(f"cannot write {self.url}: bucket '{bucket}' does not exist (or these "
                                      "credentials cannot see it); create it or choose another --out")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn a missing fsspec backend, unreachable endpoint or refused credentials into one line."""
        try:
            yield
        except NeuroprobeError:
            raise
        except ImportError as exc:
            package = PACKAGES.get(self.protocol, f"the fsspec backend for {self.protocol}://")
            raise NeuroprobeError(f"{self.url}: {self.protocol}:// stores need {package}; "
                                  f"pip install {package}") from exc
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            raise
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/google errors have no common base
            if not self.remote or not _is_remote_error(exc):
                raise
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise NeuroprobeError(f"cannot reach {self.url} ({detail}); check the credentials and endpoint of "
                                  f"{self.protocol}:// (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                  "AWS_ENDPOINT_URL)") from exc


def _is_remote_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, (OSError, ValueError)) or module.split(".")[0] in (
        "botocore", "aiobotocore", "aiohttp", "google", "gcsfs", "s3fs", "fsspec")


def open_group(where: "str | Path | Location", mode: str = "r") -> zarr.Group:
    """``zarr.open_group`` for a local path or an fsspec URL."""
    return Location.of(where).open_group(mode)


def display(where: "str | Path | Location") -> str:
    """How to name the store to a user: the URL as given, or the absolute local path."""
    location = Location.of(where)
    return location.url if location.remote else str(location.path.resolve())


def is_url(where: "str | Path") -> bool:
    return not isinstance(where, Path) and "://" in str(where) and not str(where).startswith("file://")


__all__ = ["Location", "display", "is_url", "open_group"]
