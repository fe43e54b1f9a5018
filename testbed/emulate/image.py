"""The ensemble container image, made without any registry.

Owns: building ``ttnet-base:bookworm-<hash>`` (a debootstrapped Debian rootfs
with python3 and the hands-on tools of ``BASE_PACKAGES``: ping, ip, tcpdump;
turned into an image with ``docker import``; ``<hash>`` is of that package
list, so a base made with other packages is never reused) and the
``ttnet-ensemble:<hash>`` image (``docker/Dockerfile`` on top of it, with the
repo's ``ttnet/`` and ``testbed/`` packages copied in).

Must never: pull from a registry, hard-code a mirror hostname (the mirror is
read from this host's apt sources at runtime), or rebuild an image whose tag
already exists.
"""
from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

SUITE = "bookworm"
#: What debootstrap --include adds to minbase: python3 for the agents, and
#: the tools for `python -m testbed exec|shell` and captures inside a host.
BASE_PACKAGES = ("python3", "iputils-ping", "iproute2", "tcpdump")
BASE_REPO = "ttnet-base"


def base_tag(packages: tuple[str, ...] = BASE_PACKAGES, suite: str = SUITE) -> str:
    """The base image's tag: the suite plus a hash of the package list, so a
    base image made with other packages (an older one without the tools) is
    never taken for this one: a changed list makes a new base."""
    key = hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:8]
    return f"{BASE_REPO}:{suite}-{key}"


BASE_TAG = base_tag()
PRUNE_AFTER_S = 3600
ENSEMBLE_REPO = "ttnet-ensemble"
# Paths dropped from the rootfs: nothing inside the container reads them, and
# they are most of minbase's size after python3 itself.
_TRIM = (
    "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf/*-old",
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
    "usr/share/i18n", "usr/share/zoneinfo", "var/log",
)
# What goes into the build context: only what the Dockerfile COPYs.
_CONTEXT_DIRS = ("ttnet", "testbed")


class ImageError(RuntimeError):
    """The ensemble image could not be made; the message says what to fix."""


def _client(client=None):
    if client is not None:
        return client
    import docker  # local import: the agent side never needs the SDK
    return docker.from_env(timeout=600)


# --- mirror discovery -----------------------------------------------------

def _sources_entries(etc_apt: Path) -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every `deb` source, in file order."""
    entries: list[tuple[str, list[str], list[str]]] = []
    one_line = [etc_apt / "sources.list"] + sorted((etc_apt / "sources.list.d").glob("*.list"))
    for f in one_line:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) < 3 or parts[0] != "deb":
                continue
            parts = parts[1:]
            if parts[0].startswith("["):  # options like [arch=amd64 signed-by=...]
                while parts and not parts[0].endswith("]"):
                    parts.pop(0)
                parts.pop(0)
            if len(parts) >= 2:
                entries.append((parts[0], [parts[1]], parts[2:]))
    for f in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split(),
                                fields.get("components", "").split()))
    return entries


def find_debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The first Debian (non-security) mirror with `main` in this host's apt sources."""
    for uri, suites, comps in _sources_entries(etc_apt):
        if "security" in uri or any("security" in s for s in suites):
            continue
        if "main" not in comps:
            continue
        # A Debian archive has a bookworm-ish suite name; third-party repos don't.
        if any(s.split("-")[0] in {SUITE, "stable"} for s in suites) and "/debian" in uri:
            return uri.rstrip("/")
    raise ImageError(
        f"no Debian mirror with 'main' for {SUITE} found in {etc_apt}/sources.list or "
        f"{etc_apt}/sources.list.d/*.sources; add one, or build {BASE_TAG} yourself "
        f"(any image with {', '.join(BASE_PACKAGES)} tagged {BASE_TAG} works)")


# --- base image -----------------------------------------------------------

def _image_exists(client, tag: str) -> bool:
    import docker.errors
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _trim_rootfs(root: Path) -> None:
    for pattern in _TRIM:
        for p in root.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                p.mkdir(exist_ok=True)
            else:
                p.unlink(missing_ok=True)


def build_base_image(client=None, tag: str = BASE_TAG) -> float:
    """debootstrap a minimal bookworm with BASE_PACKAGES and `docker import` it.
    Returns seconds taken."""
    client = _client(client)
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed; run `apt-get install -y debootstrap`")
    mirror = find_debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ttnet-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
               SUITE, str(root), mirror]
        log.info("making %s: %s", tag, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = proc.stdout[-2000:] + proc.stderr[-2000:]
            raise ImageError(f"debootstrap failed ({proc.returncode}); check network access "
                             f"to the apt mirror {mirror}:\n{tail}")
        log.info("debootstrap done in %.1f s; trimming and importing", time.monotonic() - t0)
        _trim_rootfs(root)
        tar_path = Path(tmp) / "rootfs.tar"
        # tar(1) keeps device nodes, xattrs and hard links exactly as debootstrap made them.
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar_path), "."],
                       check=True)
        repo, _, tg = tag.partition(":")
        out = client.api.import_image_from_file(
            str(tar_path), repository=repo, tag=tg or "latest",
            changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "ENV LANG=C.UTF-8", 'CMD ["python3"]'])
        log.debug("docker import: %s", out)
    if not _image_exists(client, tag):
        raise ImageError(f"docker import did not produce {tag}")
    took = time.monotonic() - t0
    log.info("base image %s made in %.1f s", tag, took)
    return took


def ensure_base_image(client=None, tag: str = BASE_TAG) -> str:
    client = _client(client)
    if not _image_exists(client, tag):
        build_base_image(client, tag)
    return tag


# --- ensemble image -------------------------------------------------------

def _context_files(repo_root: Path) -> list[Path]:
    files = [repo_root / "docker" / "Dockerfile"]
    for d in _CONTEXT_DIRS:
        files += sorted(p for p in (repo_root / d).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def content_hash(repo_root: Path) -> str:
    """Short hash of everything that goes into the ensemble image."""
    h = hashlib.sha256()
    h.update(BASE_TAG.encode() + b"\0")   # a new base (other packages) -> a new image
    for f in _context_files(repo_root):
        h.update(str(f.relative_to(repo_root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _build_context(repo_root: Path) -> io.BytesIO:
    """A tar of just the Dockerfile and the .py files: small, and never .venv/results."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        # The package dirs go in even when empty, so the Dockerfile's COPY never fails.
        for d in _CONTEXT_DIRS:
            if (repo_root / d).is_dir():
                tar.add(repo_root / d, arcname=d, recursive=False)
        for f in _context_files(repo_root):
            rel = f.relative_to(repo_root)
            tar.add(f, arcname="Dockerfile" if rel.parts[0] == "docker" else str(rel))
    buf.seek(0)
    return buf


def ensure_image(repo_root: Path, client=None) -> str:
    """Make sure the ensemble image for the current code exists; return its tag.

    Builds the base image first if needed (debootstrap, minutes, once per
    machine). Raises ImageError naming what is missing.
    """
    repo_root = Path(repo_root).resolve()
    if not (repo_root / "docker" / "Dockerfile").is_file():
        raise ImageError(f"{repo_root}/docker/Dockerfile not found; pass the ttnet repo root")
    for d in _CONTEXT_DIRS:
        if not (repo_root / d).is_dir():
            raise ImageError(f"{repo_root}/{d}/ not found; the image needs the {d} package")
    client = _client(client)
    tag = f"{ENSEMBLE_REPO}:{content_hash(repo_root)}"
    if _image_exists(client, tag):
        return tag
    base = ensure_base_image(client)
    t0 = time.monotonic()
    log.info("building %s from %s", tag, base)
    import docker.errors
    try:
        client.images.build(fileobj=_build_context(repo_root), custom_context=True, tag=tag,
                            buildargs={"BASE_IMAGE": base}, rm=True, pull=False,
                            labels={"ttnet": "ensemble"})
    except docker.errors.BuildError as e:
        lines = "".join(str(c.get("stream", c.get("error", ""))) for c in e.build_log)
        raise ImageError(f"building {tag} failed: {e}\n{lines[-3000:]}") from e
    log.info("built %s in %.1f s", tag, time.monotonic() - t0)
    _prune_old_ensembles(client, keep=tag)
    return tag


def _created_epoch(attrs: dict) -> float:
    """Seconds since the epoch of an image's Created ('2026-01-02T03:04:05.123Z')."""
    try:
        stamp = datetime.strptime(attrs["Created"][:19], "%Y-%m-%dT%H:%M:%S")
        return stamp.replace(tzinfo=timezone.utc).timestamp()
    except (KeyError, ValueError):
        return time.time()  # unknown age: treat as new, i.e. keep


def _prune_old_ensembles(client, keep: str) -> None:
    """Drop ensemble images of older code; an image a container still uses stays.

    Images younger than PRUNE_AFTER_S stay too: another process may have just
    built one and be about to start containers from it.
    """
    import docker.errors
    now = time.time()
    for img in client.images.list(name=ENSEMBLE_REPO):
        if keep in img.tags or now - _created_epoch(img.attrs) < PRUNE_AFTER_S:
            continue
        for t in img.tags:
            try:
                client.images.remove(t, noprune=False)
                log.info("removed old image %s", t)
            except docker.errors.APIError as e:  # in use by a live run: keep it
                log.debug("keeping %s: %s", t, e)


if __name__ == "__main__":  # python -m testbed.emulate.image: make (or find) the image, print its tag
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_image(Path(__file__).resolve().parents[2]))
