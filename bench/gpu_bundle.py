"""Pack the Python packages a lent GPU machine lacks into ``.whl/gpu_site.tar.xz`` (run it here).

A GPU machine of this workplace reaches no package registry, runs its own Python (3.12) with
PyTorch, numpy, scikit-learn, pandas and friends already installed, and receives a copy of the
repository of at most 64 MiB. ``bench/gpu_check.sh`` unpacks this archive there and puts it on
``PYTHONPATH``. What goes in: every distribution ``pptp-search`` needs at run time (walked from
the installed metadata of this venv, at the versions installed here) that is not in
:data:`IMAGE_PACKAGES`, as wheels for the target Python and x86-64 Linux, unpacked, then trimmed
(:data:`TRIM`: Ray's Java jars, dashboard web client, RLlib and LLM libraries; MLflow's web UI;
plotly's Jupyter extension) and with Ray's executables stripped of symbols: about 250 MB
unpacked, about 40 MB as xz.

    .venv/bin/python bench/gpu_bundle.py                   # needs PyPI; ~1 min + ~5 min of xz
    .venv/bin/python bench/gpu_bundle.py --python-version 3.12 --out .whl

``.whl/`` is ignored by git (.gitignore) and travels only when the device tool's ``carry`` names
it; keep nothing else there (the whole copy must stay under 64 MiB).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "gpu_site.tar.xz"
MANIFEST = "gpu_site.txt"  # beside the archive and inside it: what it holds, for which Python

#: Distributions the GPU machine's image already has (this workplace's device notes, KINDS.md,
#: package list read on 2026-11-17), restricted to those pptp-search's requirements reach. They
#: are used from the image, never carried: torch and its CUDA libraries alone are gigabytes.
IMAGE_PACKAGES = frozenset(
    [
        "aiohappyeyeballs",
        "aiohttp",
        "aiosignal",
        "annotated-doc",
        "anyio",
        "attrs",
        "certifi",
        "charset-normalizer",
        "click",
        "cloudpickle",
        "contourpy",
        "cuda-bindings",
        "cuda-pathfinder",
        "cuda-toolkit",
        "cycler",
        "filelock",
        "fonttools",
        "frozenlist",
        "fsspec",
        "grpcio",
        "h11",
        "idna",
        "jinja2",
        "joblib",
        "kiwisolver",
        "markupsafe",
        "matplotlib",
        "mpmath",
        "msgpack",
        "multidict",
        "narwhals",
        "networkx",
        "numpy",
        "opt-einsum",
        "packaging",
        "pandas",
        "pillow",
        "propcache",
        "protobuf",
        "psutil",
        "pyarrow",
        "pyparsing",
        "python-dateutil",
        "pyyaml",
        "requests",
        "scikit-learn",
        "scipy",
        "setuptools",
        "six",
        "sympy",
        "threadpoolctl",
        "torch",
        "torchvision",
        "tqdm",
        "triton",
        "typing-extensions",
        "urllib3",
        "werkzeug",
        "yarl",
        "zipp",
    ]
)
IMAGE_PREFIXES = ("nvidia-",)  # CUDA libraries: all on the image

#: paths removed after unpacking (globs relative to the site folder): none is imported by pptp,
#: search/ or the parts of gpu_check
TRIM = (
    "ray/jars",  # Java workers (33 MB)
    "ray/dashboard/client/build",  # the dashboard's web client (include_dashboard=False)
    "ray/rllib",
    "ray/llm",
    "mlflow/server/js",  # the MLflow web UI (27 MB): the check never serves it
    "plotly/labextension",  # Jupyter
    "share",
    "bin",
    "**/__pycache__",
)
#: executables and libraries stripped of their symbol tables (``strip``): ~30 MB less
STRIP = (
    "ray/_raylet.so",
    "ray/core/src/ray/gcs/gcs_server",
    "ray/core/src/ray/raylet/raylet",
)

PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: str = "pptp-search") -> dict[str, str]:
    """``{distribution: version}`` of everything ``root`` needs at run time, as installed in this
    environment (requirements with their markers evaluated here, extras followed; not ``root``)."""
    seen: dict[str, str] = {}

    def walk(name: str, extras: Iterable[str]) -> None:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(
                f"error: {name} is required but not installed here; run .ci/setup first"
            ) from None
        key = normalise(name)
        first = key not in seen
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate(_environment(extra)) for extra in ("", *extras)
            )
            if wanted and (first or extras) and (normalise(req.name) not in seen or req.extras):
                walk(req.name, tuple(req.extras))

    walk(root, ())
    seen.pop(normalise(root), None)
    return seen


def _environment(extra: str) -> dict[str, str]:
    """This interpreter's marker environment with ``extra`` set (requirements of an extra)."""
    env: dict[str, str] = dict(default_environment())  # type: ignore[arg-type]
    env["extra"] = extra
    return env


def to_carry(closure: dict[str, str]) -> dict[str, str]:
    return {
        name: version
        for name, version in sorted(closure.items())
        if name not in IMAGE_PACKAGES and not name.startswith(IMAGE_PREFIXES)
    }


def download(packages: dict[str, str], python_version: str, cache: Path) -> list[Path]:
    """Wheels for ``python_version`` on x86-64 Linux, through pip (no dependencies resolved:
    the closure is already complete)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--implementation", "cp", "-d", str(cache)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [f"{name}=={version}" for name, version in packages.items()]
    subprocess.run(cmd, check=True)
    wheels = []
    for name, version in packages.items():
        stem = normalise(name).replace("-", "_")
        found = [
            w
            for w in cache.glob("*.whl")
            if normalise(w.name.split("-")[0]).replace("-", "_") == stem
            and w.name.split("-")[1] == version
        ]
        if not found:
            raise SystemExit(f"error: pip saved no wheel for {name}=={version} in {cache}")
        wheels.append(sorted(found)[-1])
    return wheels


def unpack(wheels: Iterable[Path], site: Path) -> None:
    """Install wheels the way pip does into a ``--target`` folder, for what the check needs:
    unzip with each file's mode (Ray's executables), then move ``<dist>.data/purelib`` and
    ``platlib`` into the folder (scripts, headers and data files are not needed)."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                path = Path(z.extract(info, site))
                mode = info.external_attr >> 16
                if mode & 0o111:
                    path.chmod(0o755)
        for data in site.glob("*.data"):
            for lib in (data / "purelib", data / "platlib"):
                if lib.is_dir():
                    shutil.copytree(lib, site, dirs_exist_ok=True)
            shutil.rmtree(data)


def trim(site: Path) -> None:
    for pattern in TRIM:
        for path in sorted(site.glob(pattern), reverse=True):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    strip = shutil.which("strip")
    if strip is None:
        print("warning: no `strip` here; the archive will be ~15 MB larger", file=sys.stderr)
        return
    for rel in STRIP:
        target = site / rel
        if target.exists():
            flag = ["--strip-unneeded"] if target.suffix == ".so" else []
            subprocess.run([strip, *flag, str(target)], check=True)


def pack(site: Path, archive: Path) -> None:
    """``tar | xz -9`` with every core when both tools exist (minutes), else Python's tarfile."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".part")
    if shutil.which("tar") and shutil.which("xz"):
        with tmp.open("wb") as out:
            tar = subprocess.Popen(
                ["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE
            )
            subprocess.run(["xz", "-9", "-T0", "-c"], stdin=tar.stdout, stdout=out, check=True)
            if tar.wait() != 0:
                raise SystemExit("error: tar failed")
    else:
        with tarfile.open(tmp, "w:xz", preset=9) as t:
            t.add(site, arcname=".")
    tmp.replace(archive)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (3.12)")
    p.add_argument("--out", default=str(REPO / ".whl"), help="folder of the archive (.whl)")
    p.add_argument("--cache", help="where wheels are downloaded (default: a temporary folder)")
    args = p.parse_args(argv)
    packages = to_carry(runtime_closure())
    out = Path(args.out)
    print(f"{len(packages)} distributions to carry for Python {args.python_version}:")
    print("  " + " ".join(f"{n}=={v}" for n, v in packages.items()))
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "wheels"
        cache.mkdir(parents=True, exist_ok=True)
        site = Path(tmp) / "site"
        unpack(download(packages, args.python_version, cache), site)
        trim(site)
        manifest = f"python {args.python_version}\n" + "".join(
            f"{n}=={v}\n" for n, v in packages.items()
        )
        (site / MANIFEST).write_text(manifest)
        pack(site, out / ARCHIVE)
    (out / MANIFEST).write_text(manifest)
    others = [f.name for f in out.iterdir() if f.name not in (ARCHIVE, MANIFEST)]
    size = (out / ARCHIVE).stat().st_size / 2**20
    print(f"wrote {out / ARCHIVE} ({size:.1f} MiB) and {out / MANIFEST}")
    if others:
        print(f"warning: {out} also holds {others}: they travel too (64 MiB in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
