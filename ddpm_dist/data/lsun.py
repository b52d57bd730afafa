"""Read an LSUN category export: the LMDB directory (``data.mdb``, ``lock.mdb``) that the LSUN project's
``download.py`` fetches as ``<category>_<split>_lmdb.zip``, e.g. ``church_outdoor_train_lmdb/``.

Each entry is one image: the key is its id (a 40-character hex string), the value the encoded image (jpeg, quality 75,
per the LSUN README; webp in some exports; Pillow decodes both), resized by LSUN so that its shorter side is 256.
Entries are read in key order, which LMDB keeps sorted, so the sample index of an image is the same on every
conversion. The images carry no class (label 0: one category per export). Decoding, the center crop and the resize are
:class:`ddpm_dist.data.decode.ImageDecoder`'s, shared with the ``folder`` source.

The database is opened read-only without a lock file (``lock=False``: the export may sit on a read-only mount, and
nothing writes it meanwhile) and without read-ahead (the 3-million-image ``bedroom`` export is tens of GB; the OS
need not prefetch pages we read once, in order).

``lmdb`` is imported here only, when this source is used: ``pip install lmdb``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ddpm_dist.data import DataError
from ddpm_dist.data.decode import ImageDecoder, Source
from ddpm_dist.errors import first_line


def _open_env(root: Path):
    """The read-only LMDB environment of an export directory; DataError if it is not one."""
    try:
        import lmdb
    except ImportError:
        raise DataError("--source lsun needs the lmdb package: pip install lmdb") from None
    if root.is_file():
        raise DataError(
            f"{root} is a file: give the LMDB directory that holds data.mdb (unzip the LSUN download first)"
        )
    if not (root / "data.mdb").is_file():
        raise DataError(f"not an LMDB export: {root} holds no data.mdb (expected e.g. church_outdoor_train_lmdb/)")
    try:
        return lmdb.open(str(root), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)
    except lmdb.Error as err:
        raise DataError(f"not an LMDB export: {root}/data.mdb cannot be opened ({first_line(err)})") from None


def read_lsun(
    path: str, *, image_size: int, channels: int, strict: bool = False, limit: int | None = None, workers: int = 1
) -> Source:
    """Stream the images of the LSUN LMDB export at ``path`` in key order, the first ``limit`` readable ones if given,
    decoded by ``workers`` threads (the LMDB is read by the calling thread only).

    Undecodable values are skipped and counted in ``info['skipped']`` (their keys in ``skipped_examples``), or are a
    DataError under ``strict``. DataError if ``path`` is not an LMDB directory or holds no entries."""
    root = Path(path)
    env = _open_env(root)
    entries = env.stat()["entries"]
    if entries == 0:
        env.close()
        raise DataError(f"empty LMDB: {root} holds no images")
    info: dict = {"num_classes": 1, "class_names": [], "lmdb_entries": entries}
    decoder = ImageDecoder(size=image_size, channels=channels, strict=strict, info=info, origin=str(root),
                           workers=workers)  # fmt: skip

    def items() -> Iterator[tuple[bytes, str, int]]:
        try:
            with env.begin(buffers=False) as txn:
                for key, value in txn.cursor():
                    yield value, key.decode("ascii", "backslashreplace"), 0
        finally:
            env.close()

    count = entries if limit is None else min(limit, entries)
    return Source(count_hint=count, image_size=image_size, channels=channels, chunks=decoder.chunks(items(), limit),
                  info=info)  # fmt: skip
