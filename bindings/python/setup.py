"""Builds the native library with cargo and ships it, stripped, inside the package.

`pip install ./bindings/python` (or building a wheel from this directory, or from the
sdist) runs `cargo rustc --release --lib` of the crate and copies libquotagate.so /
libquotagate.dylib / quotagate.dll next to the Python modules, where quotagate._native
looks first, stripped of its symbols and debug info. The wheel is tagged for the
platform (py3-none-<plat>): it holds no Python extension, only a library loaded with
ctypes; `scripts/wheel` turns the Linux one into a manylinux wheel with auditwheel.

The crate is the repository this directory belongs to, or, in the sdist, the copy
packed by `cargo package` into its rust/ directory. setuptools' build/ and egg-info
directories go to a temporary directory, so a build leaves the checkout as it was.

Environment:
  CARGO                      the cargo to run (default: cargo on PATH)
  CARGO_TARGET_DIR           honoured, as cargo does
  STRIP                      the strip to run (default: strip on PATH)
  QUOTAGATE_PREBUILT_LIBRARY ship this already built library instead of running cargo
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
#: Where the sdist carries the crate.
SDIST_CRATE = "rust"


def crate_dir() -> Path:
    """The crate to build: the checkout's, or the sdist's copy."""
    if (CHECKOUT / "Cargo.toml").is_file() and (CHECKOUT / "bindings" / "python") == HERE:
        return CHECKOUT
    return HERE / SDIST_CRATE


def library_name() -> str:
    if sys.platform == "win32":
        return "quotagate.dll"
    if sys.platform == "darwin":
        return "libquotagate.dylib"
    return "libquotagate.so"


def package_version() -> str:
    text = (HERE / "src" / "quotagate" / "_version.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)  # type: ignore[union-attr]


def crate_version(crate: Path) -> str:
    text = (crate / "Cargo.toml").read_text(encoding="utf-8")
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', package, re.M)
    if match is None:
        raise SystemExit("quotagate: no version in Cargo.toml's [package]")
    return match.group(1)


def cargo() -> str:
    return os.environ.get("CARGO", "cargo")


def run_cargo(command: list[str], capture: bool = False) -> str:
    """Runs cargo; returns its standard output when ``capture``."""
    print("quotagate: " + " ".join(command), file=sys.stderr)
    try:
        run = subprocess.run(
            command, check=True, text=True, stdout=subprocess.PIPE if capture else None
        )
    except FileNotFoundError:
        raise SystemExit(
            "quotagate: cargo not found; install a Rust toolchain (https://rustup.rs) "
            "to build the native library"
        ) from None
    return run.stdout or ""


def cargo_build() -> Path:
    """Runs cargo and returns the path of the built library."""
    prebuilt = os.environ.get("QUOTAGATE_PREBUILT_LIBRARY")
    if prebuilt:
        return Path(prebuilt)
    crate = crate_dir()
    if not (crate / "Cargo.toml").is_file():
        raise SystemExit(
            f"quotagate: no Cargo.toml in {crate}; build the package from a checkout of the "
            "quotagate repository or from its sdist (or set QUOTAGATE_PREBUILT_LIBRARY)"
        )
    if crate_version(crate) != package_version():
        raise SystemExit(
            f"quotagate: the crate is {crate_version(crate)} but the Python package is "
            f"{package_version()}; change both together"
        )
    # The same command as scripts/install, so that one release build serves both.
    command = [
        cargo(), "rustc", "--release", "--lib",
        "--manifest-path", str(crate / "Cargo.toml"),
        "--message-format=json-render-diagnostics",
        "--", "--print", "native-static-libs",
    ]  # fmt: skip
    output = run_cargo(command, capture=True)
    name = library_name()
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("reason") != "compiler-artifact":
            continue
        if message.get("target", {}).get("name") != "quotagate":
            continue
        for filename in message.get("filenames", []):
            if Path(filename).name == name:
                return Path(filename)
    raise SystemExit(f"quotagate: cargo did not report building {name}")


def strip(library: Path) -> None:
    """Strips symbols and debug info from the copy the package ships (33 MB to 5 MB);
    the library keeps the symbols it exports."""
    if sys.platform == "win32":
        return  # MSVC keeps debug info in a separate .pdb already
    tool = os.environ.get("STRIP", "strip")
    flags = ["-x"] if sys.platform == "darwin" else ["--strip-unneeded"]
    try:
        subprocess.run([tool, *flags, str(library)], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"quotagate: cannot strip {library} with {tool}: {e}") from None


class build_py_with_library(build_py):
    """build_py, plus the native library copied into the package and stripped."""

    def run(self) -> None:
        super().run()
        library = cargo_build()
        if getattr(self, "editable_mode", False):
            target = HERE / "src" / "quotagate"
        else:
            target = Path(self.build_lib) / "quotagate"
        target.mkdir(parents=True, exist_ok=True)
        shipped = target / library_name()
        shutil.copyfile(library, shipped)
        shipped.chmod(0o755)
        strip(shipped)


class sdist_with_crate(sdist):
    """An sdist that builds anywhere with a Rust toolchain: the crate goes into rust/,
    as `cargo package` packs it (the sources the library needs, a normalized manifest,
    Cargo.lock)."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        crate = crate_dir()
        if crate == CHECKOUT:
            out = Path(tempfile.mkdtemp(prefix="quotagate-package-"))
            atexit.register(shutil.rmtree, out, True)
            run_cargo(
                [cargo(), "package", "--no-verify", "--allow-dirty", "--quiet",
                 "--manifest-path", str(crate / "Cargo.toml"), "--target-dir", str(out)]
            )  # fmt: skip
            packed = out / "package" / f"quotagate-{crate_version(crate)}.crate"
            with tarfile.open(packed) as archive:
                # Only regular files and directories inside the target (Python 3.12's rule).
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                archive.extractall(out / "unpacked", **safe)  # type: ignore[arg-type]
            crate = out / "unpacked" / f"quotagate-{crate_version(crate)}"
        shutil.copytree(
            crate,
            Path(base_dir) / SDIST_CRATE,
            ignore=shutil.ignore_patterns(".cargo_vcs_info.json", "Cargo.toml.orig", "target"),
        )


class BinaryDistribution(Distribution):
    """A distribution with a native part: built and installed per platform (platlib)."""

    def has_ext_modules(self) -> bool:
        return True


class bdist_wheel_for_platform(bdist_wheel):
    """A wheel for one platform, for any Python 3 (the library is loaded by ctypes)."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


# setuptools' working directories, outside the source tree.
_work = tempfile.mkdtemp(prefix="quotagate-setuptools-")
atexit.register(shutil.rmtree, _work, True)

setup(
    distclass=BinaryDistribution,
    cmdclass={
        "build_py": build_py_with_library,
        "bdist_wheel": bdist_wheel_for_platform,
        "sdist": sdist_with_crate,
    },
    options={
        "build": {"build_base": os.path.join(_work, "build")},
        "egg_info": {"egg_base": _work},
    },
)
