#!/usr/bin/env bash
# Tests the Python binding the way users get it: installs bindings/python with pip into
# a venv (which runs `cargo rustc --release` through the package's build hook: the
# release build of scripts/install, fresh when test-install.sh ran first), then
# type-checks the package, runs the tests from outside the source tree (so the
# installed package and its own copy of the library are what is tested), and runs the
# examples once against the local simulator.
#
#   scripts/test-python.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/py-venv
py=$venv/bin/python
pip=("$py" -m pip install -q --disable-pip-version-check)

if [[ ! -x $py ]]; then
  python3 -m venv "$venv"
fi
"${pip[@]}" -r bindings/python/requirements-test.txt
# --force-reinstall: the version does not change between builds, the library does.
"${pip[@]}" --force-reinstall --no-deps ./bindings/python

unset QUOTAGATE_LIBRARY QUOTAGATE_TENANT_ID QUOTAGATE_CLIENT_ID QUOTAGATE_CLIENT_SECRET

# A Rust process for the tests that share a quota store between languages.
cargo build --quiet --bin quotagate
export QUOTAGATE_TEST_CLI=$root/target/debug/quotagate

echo "== pyflakes and mypy --strict"
"$py" -m pyflakes bindings/python/src bindings/python/tests bindings/python/examples bindings/python/benchmarks
"$py" -m mypy --strict --no-error-summary bindings/python/src/quotagate
# The examples, as a user's code that type-checks against the installed package.
"$py" -m mypy --strict --no-error-summary bindings/python/examples/*.py

outside=$(mktemp -d)
trap 'rm -rf "$outside"' EXIT
cd "$outside"

echo "== pytest"
QUOTAGATE_TEST_INSTALLED=1 "$py" -m pytest -q -p no:cacheprovider \
  -c "$root/bindings/python/pyproject.toml" --rootdir "$root/bindings/python" \
  "$root/bindings/python/tests" "$@"

echo "== examples against the simulator"
for example in "$root"/bindings/python/examples/[!_]*.py; do
  echo "-- ${example#"$root"/}"
  "$py" "$example"
done
