"""``mtbench data fetch lpp-XX``: the files a run needs, from OpenNeuro's public S3 bucket over HTTPS.

Which files exist, their sizes and md5 come from the bucket itself: one S3 ``ListObjectsV2``
listing of the dataset's prefix (paged), whose ETags are the md5 of these single-part uploads
(a multipart ETag, with a ``-``, is checked by size only). Option ``manifest`` replaces the
listing with a ``path, size, md5`` TSV (e.g. the dataset's own manifest, for offline checks).
From it: the word annotation, ``participants.tsv``, ``dataset_description.json`` and the
preprocessed BOLD of the chosen subjects.

Each file is downloaded to ``<name>.part`` (resumed with an HTTP ``Range`` request when a
previous attempt was cut), checked against the manifest's size and md5, then renamed into
place. Files already present are checked the same way (their md5 is remembered in
``.mtbench-fetch.json`` with size and mtime, so a re-run neither downloads nor re-hashes).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mtbench.errors import MtbenchError
from mtbench.paths import atomic_write_bytes, inside, writable_folder

from .layout import (
    ManifestFile,
    default_root,
    language,
    read_manifest,
    runs_by_subject,
    subjects_in_manifest,
)

_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"

DEFAULT_URL = "https://s3.amazonaws.com/openneuro.org/ds003643"
URL_ENV = "MTBENCH_LPP_URL"
CHUNK = 1 << 20
ATTEMPTS = 3  # per file: a cut connection is resumed, a corrupt download restarted
TIMEOUT_S = 60
STATE_FILE = ".mtbench-fetch.json"
OPTIONS = ("base_url", "manifest")


def select_files(key: str, manifest: list[ManifestFile], subjects: list[str] | None,
                 annotations_only: bool) -> list[ManifestFile]:
    """The manifest rows one language needs: metadata, annotation and (unless told not to) BOLD."""
    lang = language(key)
    wanted = {"participants.tsv", "dataset_description.json", str(lang.annotation)}
    rows = [m for m in manifest if m.path in wanted]
    if annotations_only:
        return rows
    available = subjects_in_manifest(lang, manifest)
    chosen = available if not subjects else [s.removeprefix("sub-") for s in subjects]
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise MtbenchError(f"no subject {unknown[0]!r} in lpp-{key}: subjects are {available[0]}..{available[-1]} "
                           f"({len(available)}), see participants.tsv")
    runs = runs_by_subject(lang, [m.path for m in manifest])
    bold = {path for s in chosen for path in runs[s]}
    return rows + [m for m in manifest if m.path in bold]


def list_bucket(base_url: str) -> list[ManifestFile]:
    """Every file under ``base_url`` (``<bucket URL>/<dataset prefix>``), from S3 ``ListObjectsV2``.

    Returns
    -------
    list of ManifestFile
        Paths relative to the dataset prefix; ``md5`` is the ETag, or ``""`` for a multipart
        upload (its ETag is not an md5).
    """
    bucket_url, prefix = base_url.rstrip("/").rsplit("/", 1)
    files, token = [], None
    while True:
        query = {"list-type": "2", "prefix": prefix + "/"}
        if token:
            query["continuation-token"] = token
        url = f"{bucket_url}/?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                tree = ET.fromstring(response.read())
        except (urllib.error.URLError, OSError, ET.ParseError) as exc:
            raise MtbenchError(f"cannot list {bucket_url} (prefix {prefix}/): {exc}; check the network or pass "
                               "--option manifest=FILE (a path/size/md5 TSV)") from None
        ns = _S3 if tree.tag.startswith(_S3) else ""
        for item in tree.iter(f"{ns}Contents"):
            key, etag = item.findtext(f"{ns}Key"), item.findtext(f"{ns}ETag", "").strip('"')
            files.append(ManifestFile(key[len(prefix) + 1:], int(item.findtext(f"{ns}Size")),
                                      "" if "-" in etag else etag))
        token = tree.findtext(f"{ns}NextContinuationToken")
        if tree.findtext(f"{ns}IsTruncated") != "true" or not token:
            return files


def _md5_matches(path: Path, item: ManifestFile) -> bool:
    return not item.md5 or md5_of(path) == item.md5  # no md5 (multipart upload): the size decides


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class _Fetcher:
    def __init__(self, root: Path, base_url: str, progress):
        self.root, self.base_url, self.progress = root, base_url.rstrip("/"), progress
        self.lock = threading.Lock()
        state_path = root / STATE_FILE
        try:
            self.state = json.loads(state_path.read_text()) if state_path.exists() else {}
        except (OSError, ValueError):
            self.state = {}  # a damaged state file only costs re-hashing
        self.total_task = progress.add_task("lpp total", total=0) if progress is not None else None
        self.downloaded_bytes = 0

    def save_state(self) -> None:
        with self.lock:
            atomic_write_bytes(self.root / STATE_FILE, json.dumps(self.state, indent=0, sort_keys=True).encode())

    def _verified(self, path: Path, item: ManifestFile) -> bool:
        stat = path.stat()
        if stat.st_size != item.size:
            return False
        remembered = self.state.get(item.path)
        if remembered and remembered == [stat.st_size, stat.st_mtime_ns, item.md5]:
            return True
        ok = _md5_matches(path, item)
        if ok:
            with self.lock:
                self.state[item.path] = [stat.st_size, stat.st_mtime_ns, item.md5]
        return ok

    def _advance(self, task, n: int) -> None:
        if self.progress is not None:
            if task is not None:
                self.progress.update(task, advance=n)
            self.progress.update(self.total_task, advance=n)

    def fetch(self, item: ManifestFile) -> bool:
        """Make ``root/item.path`` complete and verified; True when something was downloaded."""
        path = self.root / item.path
        if path.exists():
            if self._verified(path, item):
                self._advance(None, item.size)
                return False
            path.unlink()  # wrong size or md5: corrupt, fetch again
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        task = self.progress.add_task(path.name, total=item.size) if self.progress is not None else None
        last_error = "unknown"
        try:
            for _ in range(ATTEMPTS):
                try:
                    self._download(item, part, task)
                except (urllib.error.URLError, OSError, ConnectionError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                    continue  # resume from what reached the disk
                size = part.stat().st_size
                if size < item.size:  # the server stopped early: resume
                    last_error = f"transfer stopped at {size} of {item.size} bytes"
                    continue
                if size == item.size and _md5_matches(part, item):
                    os.replace(part, path)
                    stat = path.stat()
                    with self.lock:
                        self.state[item.path] = [stat.st_size, stat.st_mtime_ns, item.md5]
                    return True
                last_error = f"got {size} bytes with another md5 than the manifest's ({item.size} bytes, {item.md5})"
                part.unlink()  # corrupt: start over
        finally:
            if task is not None:
                self.progress.remove_task(task)
        raise MtbenchError(f"could not download {item.path} from {self.base_url} after {ATTEMPTS} attempts "
                           f"({last_error}); re-run `mtbench data fetch` to resume")

    def _download(self, item: ManifestFile, part: Path, task) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > item.size:
            part.unlink()
            have = 0
        if task is not None:
            self.progress.update(task, completed=have)
        if have == item.size:
            return
        request = urllib.request.Request(f"{self.base_url}/{item.path}")
        if have:
            request.add_header("Range", f"bytes={have}-")
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
                if task is not None:
                    self.progress.update(task, completed=0)
            with open(part, "ab" if have else "wb") as handle:
                while True:
                    try:
                        block = response.read1(CHUNK)
                    except http.client.IncompleteRead as cut:  # keep what arrived, resume from there
                        handle.write(cut.partial)
                        raise
                    if not block:
                        break
                    handle.write(block)
                    self._advance(task, len(block))
                    with self.lock:
                        self.downloaded_bytes += len(block)


def fetch_lpp(key: str, root: Path | None = None, subjects: list[str] | None = None, annotations_only: bool = False,
              jobs: int = 4, progress=None, **options) -> str:
    """Download what ``lpp-<key>`` needs into ``root`` (ds003643 layout).

    Parameters
    ----------
    key : {"en", "fr", "cn"}
    root : Path, optional
        Default ``$MTBENCH_LPP_ROOT`` or the mtbench cache.
    subjects : list of str, optional
        Subject ids (``EN057`` or ``sub-EN057``); default all of that language.
    annotations_only : bool
        Only the annotation and the top-level metadata.
    jobs : int
        Parallel downloads.
    progress : rich.progress.Progress, optional
    **options
        ``base_url`` (default ``$MTBENCH_LPP_URL`` or OpenNeuro's S3 bucket), ``manifest``
        (a ``path, size, md5`` TSV used instead of listing the bucket).

    Returns
    -------
    str
        One line: what was downloaded and what was already there.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MtbenchError(f"unknown option {unknown[0]!r} for `data fetch`: options are {', '.join(OPTIONS)}")
    root = writable_folder(Path(root) if root is not None else default_root(f"lpp-{key}"),
                           "give --root a folder you can write to")  # before listing and downloading
    base_url = str(options.get("base_url") or os.environ.get(URL_ENV) or DEFAULT_URL)
    manifest = read_manifest(Path(options["manifest"])) if options.get("manifest") else list_bucket(base_url)
    items = select_files(key, manifest, subjects, annotations_only)
    if not items:
        raise MtbenchError(f"no file of lpp-{key} found at {base_url}: check --option base_url / manifest")
    source, fix = ((f"manifest {options['manifest']}", "fix or remove that row of the manifest")
                   if options.get("manifest") else (f"the listing of {base_url}", "check --option base_url"))
    for item in items:  # every path to be written stays inside root: checked before any download
        inside(root, item.path, source, fix)
    fetcher = _Fetcher(root, base_url, progress)
    if fetcher.total_task is not None:
        progress.update(fetcher.total_task, total=sum(i.size for i in items))
    try:
        with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
            downloaded = list(pool.map(fetcher.fetch, items))
    finally:
        fetcher.save_state()
    n_new = sum(downloaded)
    return (f"lpp-{key}: {n_new} file(s) downloaded ({fetcher.downloaded_bytes / 1e6:.1f} MB), "
            f"{len(items) - n_new} already present and verified, in {root}")
