"""Builds the native library with cargo and ships it inside the package.

`pip install ./bindings/python` (or building a wheel from this directory) runs
`cargo build --release --lib` of the repository this directory belongs to, and copies
libquotagate.so / libquotagate.dylib / quotagate.dll next to the Python modules, where
quotagate._native looks first. The wheel is tagged for the platform (py3-none-<plat>):
it holds no Python extension, only a library loaded with ctypes.

Environment:
  CARGO                      the cargo to run (default: cargo on PATH)
  CARGO_TARGET_DIR           honoured, as cargo does
  QUOTAGATE_PREBUILT_LIBRARY ship this already built library instead of running cargo
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def library_name() -> str:
    if sys.platform == "win32":
        return "quotagate.dll"
    if sys.platform == "darwin":
        return "libquotagate.dylib"
    return "libquotagate.so"


def package_version() -> str:
    text = (HERE / "src" / "quotagate" / "_version.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)  # type: ignore[union-attr]


def crate_version() -> str:
    text = (REPO / "Cargo.toml").read_text(encoding="utf-8")
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', package, re.M)
    if match is None:
        raise SystemExit("quotagate: no version in Cargo.toml's [package]")
    return match.group(1)


def cargo_build() -> Path:
    """Runs cargo and returns the path of the built library."""
    prebuilt = os.environ.get("QUOTAGATE_PREBUILT_LIBRARY")
    if prebuilt:
        return Path(prebuilt)
    if not (REPO / "Cargo.toml").is_file():
        raise SystemExit(
            f"quotagate: no Cargo.toml in {REPO}; build the package from a checkout of the "
            "quotagate repository (or set QUOTAGATE_PREBUILT_LIBRARY)"
        )
    if crate_version() != package_version():
        raise SystemExit(
            f"quotagate: the crate is {crate_version()} but the Python package is "
            f"{package_version()}; change both together"
        )
    cargo = os.environ.get("CARGO", "cargo")
    command = [
        cargo, "build", "--release", "--lib",
        "--manifest-path", str(REPO / "Cargo.toml"),
        "--message-format=json-render-diagnostics",
    ]  # fmt: skip
    print("quotagate: " + " ".join(command), file=sys.stderr)
    try:
        run = subprocess.run(command, stdout=subprocess.PIPE, check=True, text=True)
    except FileNotFoundError:
        raise SystemExit(
            "quotagate: cargo not found; install a Rust toolchain (https://rustup.rs) "
            "to build the native library"
        ) from None
    name = library_name()
    for line in run.stdout.splitlines():
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


class build_py_with_library(build_py):
    """build_py, plus the native library copied into the package."""

    def run(self) -> None:
        super().run()
        library = cargo_build()
        if getattr(self, "editable_mode", False):
            target = HERE / "src" / "quotagate"
        else:
            target = Path(self.build_lib) / "quotagate"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, target / library_name())


class BinaryDistribution(Distribution):
    """A distribution with a native part: built and installed per platform (platlib)."""

    def has_ext_modules(self) -> bool:
        return True


class bdist_wheel_for_platform(bdist_wheel):
    """A wheel for one platform, for any Python 3 (the library is loaded by ctypes)."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=BinaryDistribution,
    cmdclass={"build_py": build_py_with_library, "bdist_wheel": bdist_wheel_for_platform},
)
