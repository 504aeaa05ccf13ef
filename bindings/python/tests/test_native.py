"""Finding and loading the library, the version check, and the C ABI table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import quotagate
from quotagate import _native

from conftest import HEADER, header_defines, header_functions, subprocess_env


def test_versions_agree() -> None:
    assert quotagate.library_version() == quotagate.__version__ == "0.1.0"
    major, minor, patch = (int(x) for x in quotagate.__version__.split("."))
    assert _native.lib.qg_version_number() == major * 1_000_000 + minor * 1000 + patch


def test_package_version_equals_the_crate_version() -> None:
    cargo = HEADER.parents[1] / "Cargo.toml"
    if not cargo.is_file():
        pytest.skip("not in a checkout")
    assert f'version = "{quotagate.__version__}"' in cargo.read_text(encoding="utf-8")


def test_every_header_function_is_declared_and_exported() -> None:
    declared = {name for name, _, _ in _native.SIGNATURES}
    in_header = header_functions()
    assert in_header, "no function found in the header"
    assert sorted(set(in_header) - declared) == []
    assert sorted(set(in_header) & set(_native.lib.missing)) == []


def test_constants_match_the_header() -> None:
    for name, value in header_defines().items():
        # QG_FEATURE_SIM and the like are for C's #if; the package asks at run time.
        if name.startswith("QG_VERSION") or re.fullmatch(r"QG_FEATURE_[A-Z]+", name):
            continue
        assert getattr(_native, name) == value, name


def test_the_library_checks_the_version_the_package_was_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _native._check_version()  # what the import did
    written_for = _native.HEADER_VERSION_NUMBER
    # A library of another series, or older than the package, is refused with the
    # library's own message.
    for header in (written_for + 1_000_000, written_for + 1000, written_for + 1):
        monkeypatch.setattr(_native, "HEADER_VERSION_NUMBER", header)
        with pytest.raises(ImportError, match="cannot serve a caller built against"):
            _native._check_version()


def test_features_name_what_the_library_was_built_with() -> None:
    # scripts/test-python.sh builds the library with its default features: all of them.
    assert quotagate.features() == {"sim", "pfx", "redis"}
    assert _native.lib.qg_features() == (
        _native.QG_FEATURE_BIT_SIM | _native.QG_FEATURE_BIT_PFX | _native.QG_FEATURE_BIT_REDIS
    )


def test_a_missing_feature_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from quotagate.testing import Simulator

    monkeypatch.setattr(_native, "features", lambda: frozenset({"pfx"}))
    with pytest.raises(quotagate.FeatureError, match="needs the feature 'sim'") as caught:
        Simulator()
    assert "it has: pfx" in str(caught.value)
    assert isinstance(caught.value, quotagate.Error)


def test_a_function_outside_the_table_cannot_be_called() -> None:
    with pytest.raises(AttributeError, match="SIGNATURES"):
        _native.lib.qg_no_such_function()


def test_result_str() -> None:
    assert _native.result_str(_native.QG_OK) == "success"
    assert _native.result_str(999_999) == "unknown result code"


@pytest.mark.skipif(
    os.environ.get("QUOTAGATE_TEST_INSTALLED") != "1", reason="only for the installed package"
)
def test_the_installed_package_and_its_own_library_are_used() -> None:
    package_dir = Path(quotagate.__file__).resolve().parent
    assert "site-packages" in package_dir.parts
    assert Path(quotagate.library_path()).resolve().parent == package_dir


def test_a_missing_library_names_every_path_tried(tmp_path: Path) -> None:
    env = subprocess_env()
    env["QUOTAGATE_LIBRARY"] = str(tmp_path / "nowhere" / "libquotagate.so")
    run = subprocess.run(
        [sys.executable, "-c", "import quotagate"], env=env, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "ImportError" in run.stderr
    assert str(tmp_path / "nowhere" / "libquotagate.so") in run.stderr
    assert "QUOTAGATE_LIBRARY" in run.stderr


def test_candidate_paths_include_the_package_dir_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUOTAGATE_LIBRARY", raising=False)
    paths = _native.candidate_paths()
    assert paths[0] == Path(_native.__file__).resolve().parent / _native.library_name()


def test_candidate_paths_honour_cargo_target_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QUOTAGATE_LIBRARY", raising=False)
    monkeypatch.setenv("CARGO_TARGET_DIR", str(tmp_path))
    paths = _native.candidate_paths()
    if _native._checkout_root(Path(_native.__file__).resolve().parent) is None:
        assert len(paths) == 1  # installed: only next to the package
    else:
        assert paths[1:3] == [
            tmp_path / "release" / _native.library_name(),
            tmp_path / "debug" / _native.library_name(),
        ]
