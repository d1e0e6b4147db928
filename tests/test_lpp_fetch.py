"""`mtbench data fetch lpp-en` against a local HTTP server serving a small fake bucket.

The bucket has the real file names of the ds003643 manifest (annotation, metadata, the
BOLD runs of two English subjects) with small random contents; the test manifest records
their sizes and md5. The server honours HTTP Range and can cut a transfer midway.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from mtbench.cli import main
from mtbench.errors import MtbenchError
from mtbench_plugins.datasets.lpp.fetch import STATE_FILE, fetch_lpp
from mtbench_plugins.datasets.lpp.layout import read_manifest

SUBJECTS = ["EN057", "EN093"]  # EN093's run labels have gaps: 06-08, 11-16


class Bucket:
    """Files by path, the requests seen, and which transfers to cut."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: set[str] = set()  # first full GET of these paths stops halfway
        self.lock = threading.Lock()


def _handler(bucket: Bucket):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/?"):  # S3 ListObjectsV2 of the bucket, 10 keys per page
                return self._list(dict(urllib.parse.parse_qsl(self.path[2:])))
            path = self.path.split("/", 2)[-1]  # /ds003643/<path>
            with bucket.lock:
                bucket.requests.append((path, self.headers.get("Range")))
            body = bucket.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start, status = 0, 200
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                status = 206
            chunk = body[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(chunk)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            with bucket.lock:
                cut = start == 0 and path in bucket.cut_once
                bucket.cut_once.discard(path)
            if cut:  # promise everything, send half, drop the connection
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(chunk)

        def _list(self, query):
            with bucket.lock:
                bucket.requests.append(("?list", query.get("continuation-token")))
            keys = sorted(f"{query['prefix']}{p}" for p in bucket.files)
            start = int(query.get("continuation-token", 0))
            page = keys[start:start + 10]
            more = start + 10 < len(keys)
            contents = "".join(
                f"<Contents><Key>{k}</Key><Size>{len(bucket.files[k.split('/', 1)[1]])}</Size>"
                f"<ETag>&quot;{hashlib.md5(bucket.files[k.split('/', 1)[1]]).hexdigest()}&quot;</ETag></Contents>"
                for k in page)
            body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
                    'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{contents}"
                    + (f"<NextContinuationToken>{start + 10}</NextContinuationToken>" if more else "")
                    + "</ListBucketResult>").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def bucket_server(tmp_path, lpp_reference):
    real = read_manifest(lpp_reference / "ds003643_manifest.tsv")
    wanted = [m for m in real if m.path in ("participants.tsv", "dataset_description.json",
                                            "annotation/EN/lppEN_word_information.csv")
              or any(f"/sub-{s}/" in m.path for s in SUBJECTS)]
    assert len(wanted) == 3 + 9 * len(SUBJECTS)
    rng = np.random.default_rng(0)
    files = {m.path: rng.bytes(int(rng.integers(3000, 40000))) for m in wanted}
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("path\tsize\tmd5\n" + "".join(
        f"{p}\t{len(b)}\t{hashlib.md5(b).hexdigest()}\n" for p, b in files.items()))
    bucket = Bucket(files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(bucket))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ds003643"
    yield bucket, url, manifest
    server.shutdown()
    server.server_close()


def _fetch(root, url, manifest, **kwargs):
    return fetch_lpp("en", root=root, subjects=kwargs.pop("subjects", SUBJECTS), jobs=4, base_url=url,
                     manifest=str(manifest), **kwargs)


def _assert_complete(root, bucket):
    for path, body in bucket.files.items():
        assert (root / path).read_bytes() == body, path
    assert not list(root.rglob("*.part"))


def test_fresh_fetch_then_rerun_downloads_nothing(tmp_path, bucket_server):
    bucket, url, manifest = bucket_server
    root = tmp_path / "ds003643"
    message = _fetch(root, url, manifest)
    assert message.startswith("lpp-en: 21 file(s) downloaded") and "0 already present" in message
    _assert_complete(root, bucket)
    assert (root / "derivatives/sub-EN093/func/sub-EN093_task-lppEN_run-16_space-MNIColin27_desc-preproc_bold.nii.gz").exists()
    n_requests = len(bucket.requests)
    again = _fetch(root, url, manifest)
    assert again.startswith("lpp-en: 0 file(s) downloaded (0.0 MB), 21 already present and verified")
    assert len(bucket.requests) == n_requests


def test_cut_transfer_is_resumed_with_range(tmp_path, bucket_server):
    bucket, url, manifest = bucket_server
    root = tmp_path / "ds003643"
    annotation = "annotation/EN/lppEN_word_information.csv"
    bold = next(p for p in bucket.files if "sub-EN057" in p and "run-19" in p)
    bucket.cut_once.update({annotation, bold})
    _fetch(root, url, manifest)
    _assert_complete(root, bucket)
    for path in (annotation, bold):
        ranges = [r for p, r in bucket.requests if p == path]
        assert ranges[0] is None and ranges[1] == f"bytes={len(bucket.files[path]) // 2}-", ranges


def test_partial_file_from_an_interrupted_run_is_resumed(tmp_path, bucket_server):
    bucket, url, manifest = bucket_server
    root = tmp_path / "ds003643"
    path = "participants.tsv"
    (root).mkdir()
    (root / f"{path}.part").write_bytes(bucket.files[path][:1000])
    _fetch(root, url, manifest, annotations_only=True)
    assert [r for p, r in bucket.requests if p == path] == ["bytes=1000-"]
    assert (root / path).read_bytes() == bucket.files[path]
    assert sorted(p for p, _ in bucket.requests) == sorted(
        ["participants.tsv", "dataset_description.json", "annotation/EN/lppEN_word_information.csv"])


def test_corrupted_file_is_detected_and_fetched_again(tmp_path, bucket_server):
    bucket, url, manifest = bucket_server
    root = tmp_path / "ds003643"
    _fetch(root, url, manifest)
    victim = next(p for p in bucket.files if "sub-EN093" in p)
    damaged = bytearray(bucket.files[victim])
    damaged[100] ^= 0xFF  # same size, different md5
    (root / victim).write_bytes(bytes(damaged))
    os.utime(root / victim, ns=(1, 1))  # a new mtime: the remembered md5 no longer vouches for it
    before = len(bucket.requests)
    message = _fetch(root, url, manifest)
    assert message.startswith("lpp-en: 1 file(s) downloaded") and "20 already present" in message
    assert [p for p, _ in bucket.requests[before:]] == [victim]
    _assert_complete(root, bucket)
    assert (root / STATE_FILE).exists()


def test_server_sending_wrong_bytes_fails_in_one_line(tmp_path, bucket_server):
    bucket, url, manifest = bucket_server
    path = "dataset_description.json"
    bucket.files[path] = b"x" * len(bucket.files[path])  # right size, wrong md5
    with pytest.raises(MtbenchError, match="could not download dataset_description.json .* 3 attempts") as err:
        _fetch(tmp_path / "root", url, manifest, annotations_only=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "root" / path).exists()
    with pytest.raises(MtbenchError, match="no subject 'EN999'"):
        _fetch(tmp_path / "root", url, manifest, subjects=["EN999"])


def test_cli_fetch_annotations_only(tmp_path, bucket_server):
    bucket, url, manifest = bucket_server
    root = tmp_path / "cli-root"
    result = CliRunner().invoke(main, ["data", "fetch", "lpp-en", "--annotations-only", "--root", str(root),
                                       "--option", f"base_url={url}", "--option", f"manifest={manifest}"])
    assert result.exit_code == 0, result.output
    assert "3 file(s) downloaded" in result.output
    assert (root / "annotation/EN/lppEN_word_information.csv").exists()
    result = CliRunner().invoke(main, ["data", "fetch", "synthetic"])
    assert result.exit_code == 2 and "dataset 'synthetic' has no `data fetch` command" in result.output
    (tmp_path / "afile").write_text("")  # a root that cannot be made: one line before any request
    n_requests = len(bucket.requests)
    result = CliRunner().invoke(main, ["data", "fetch", "lpp-en", "--annotations-only", "--root",
                                       str(tmp_path / "afile" / "root"), "--option", f"base_url={url}"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"Error: cannot write to {tmp_path / 'afile' / 'root'} ({tmp_path / 'afile'} is a file); give --root a "
        "folder you can write to"), result.output
    assert len(bucket.requests) == n_requests


def test_without_a_manifest_the_bucket_listing_is_used(tmp_path, bucket_server):
    """The default: list the bucket (paged ListObjectsV2), ETags as md5, then download."""
    bucket, url, _ = bucket_server
    root = tmp_path / "ds003643"
    message = fetch_lpp("en", root=root, subjects=["EN093"], jobs=2, base_url=url)
    assert message.startswith("lpp-en: 12 file(s) downloaded")
    listing = [token for path, token in bucket.requests if path == "?list"]
    assert listing == [None, "10", "20"]  # 21 keys, 10 per page
    assert not any("sub-EN057" in path for path, _ in bucket.requests)
    for path in [p for p in bucket.files if "sub-EN057" not in p]:
        assert (root / path).read_bytes() == bucket.files[path]


# --------------------------------------------------------------------------- paths from a manifest stay inside --root
def _hostile(tmp_path, bucket, manifest, name, rewrite):
    """A copy of the manifest whose sub-EN057 rows are rewritten by ``rewrite``, the server serving them too."""
    lines = manifest.read_text().splitlines(keepends=True)
    rows = [line.split("\t") for line in lines[1:]]
    for row in rows:
        if "/sub-EN057/" in row[0]:
            bucket.files[rewrite(row[0])] = bucket.files[row[0]]
            row[0] = rewrite(row[0])
    hostile = tmp_path / name
    hostile.write_text(lines[0] + "".join("\t".join(row) for row in rows))
    return hostile


def test_manifest_rows_outside_root_are_refused_before_any_download(tmp_path, bucket_server):
    """Issue 32, item 1: `../` and absolute rows were downloaded wherever they pointed."""
    bucket, url, manifest = bucket_server
    root = tmp_path / "deep" / "er" / "root"
    escaped, absolute = tmp_path / "deep" / "pwned", tmp_path / "abs"
    climbing = _hostile(tmp_path, bucket, manifest, "climbing.tsv", lambda p: "../../pwned/" + p)
    result = CliRunner().invoke(main, ["data", "fetch", "lpp-en", "--subjects", "EN057", "--root", str(root),
                                       "--option", f"base_url={url}", "--option", f"manifest={climbing}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"Error: '../../pwned/derivatives/sub-EN057/func/sub-EN057_task-lppEN_run-15_space-MNIColin27_desc-preproc_"
        f"bold.nii.gz' from manifest {climbing} is not a path inside {root} (a '..' component); fix or remove that "
        "row of the manifest"), result.stderr
    outside = _hostile(tmp_path, bucket, manifest, "absolute.tsv", lambda p: f"{absolute}/{p}")
    with pytest.raises(MtbenchError, match=r"^'/.*/abs/derivatives/sub-EN057/.*' from manifest .*absolute\.tsv is "
                                           r"not a path inside .*root \(an absolute path\); fix or remove") as err:
        _fetch(root, url, outside, subjects=["EN057"])
    assert "\n" not in str(err.value)
    assert bucket.requests == []  # nothing downloaded, not even the rows inside root
    assert not escaped.exists() and not absolute.exists()
    assert [p.name for p in root.iterdir()] == []  # root made (writable check), nothing in it


def test_inside_keeps_paths_in_their_folder(tmp_path):
    from mtbench.paths import inside

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert inside(root, "sub/file.txt", "test") == (root / "sub" / "file.txt").resolve()
    assert inside(root, "./a//b", "test") == (root / "a" / "b").resolve()
    (root / "link-in").symlink_to(root / "sub")
    assert inside(root, "link-in/x", "test") == (root / "sub" / "x").resolve()
    (tmp_path / "elsewhere").mkdir()
    (root / "link-out").symlink_to(tmp_path / "elsewhere")
    refused = {
        "../x": "a '..' component", "sub/../../x": "a '..' component", "sub/../x": "a '..' component",
        "/etc/passwd": "an absolute path", str(root / "sub" / "x"): "an absolute path",
        "": "an empty name", ".": "an empty name", " ": "an empty name", "a\0b": "a NUL character",
        "link-out/x": f"it resolves to {(tmp_path / 'elsewhere' / 'x').resolve()}",
    }
    for relative, reason in refused.items():
        with pytest.raises(MtbenchError) as err:
            inside(root, relative, "plan P", "fix it")
        assert str(err.value) == f"{relative!r} from plan P is not a path inside {root} ({reason}); fix it"
    assert not (tmp_path / "x").exists() and list((tmp_path / "elsewhere").iterdir()) == []
