"""Finding a data set's files: data.path, then known install places (Debian's packages), then a download where
allowed (`data.download`)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import PipelineError

URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "tiny-imagenet": "http://cs231n.stanford.edu/",
}


DEBIAN_PLACES = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


# --------------------------------------------------------------------------------------------- locating
def locate(name: str, files: list[str], places: list[Path], download: bool, dest: Path) -> Path:
    """The first place holding every file in `files` (each may also be gzipped); else download into dest."""
    for place in places:
        if all(find_variant(place / f) for f in files):
            return place
    if download:
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for f in files:
                if not find_variant(dest / f):
                    fetch(URLS[name] + f, dest / f)
            return dest
        except (urllib.error.URLError, OSError) as e:
            reason = f"download failed ({getattr(e, 'reason', e)})"
    else:
        reason = "downloads are off (data.download: false)"
    looked = "\n".join(f"  - {p}: missing {', '.join(f for f in files if not find_variant(p / f))}" for p in places)
    how = f"Put the files in {places[0]}"
    deb = DEBIAN_PLACES.get(name)
    if deb is not None and deb not in places and all(find_variant(deb / f) for f in files):
        how += f" (`make data` copies them from Debian's {deb}), or set `data.path: {deb}`"
    elif deb is not None:
        how += f", install Debian's package dataset-{name} (apt-get install dataset-{name}; `make data` does it)"
    if name in URLS:
        how += f", or download them from {URLS[name]}"
    raise PipelineError(f"{name}: data set not found and {reason}. Looked in:\n{looked}\n{how}.")


def find_variant(path: Path) -> Path | None:
    """path itself, or path + '.gz'."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def fetch(url: str, dest: Path) -> None:
    """Download url to dest whole: into a .part file, renamed when complete."""
    print(f"downloading {url} -> {dest}", file=sys.stderr)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    part.replace(dest)
