#!/usr/bin/env bash
# Tests the Python wheel as a packager ships it: scripts/wheel builds the sdist and, from
# it, the manylinux wheel; then this checks the tag, the stripped library inside, the
# sdist's contents, that the build (and a plain `pip wheel bindings/python`) left the
# checkout as it was, and installs the wheel into a fresh venv outside the repository to
# run a limiter call and a simulator call.
#
# Usage: scripts/test-wheel.sh   (honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$root/$target

for tool in python3 readelf unzip tar git; do
  command -v "$tool" >/dev/null || { echo "test-wheel.sh: $tool is required: run scripts/install-test-deps" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/check.sh
source scripts/check.sh
# What git sees in the checkout outside target/, ignored files included.
tree_state() { git status --porcelain --ignored --untracked-files=all | grep -Ev '^.. "?target/' || true; }

before=$(tree_state)
scripts/wheel
# `pip wheel bindings/python` too, as a packager may run it (a linux_x86_64 wheel).
"$target/wheel-venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
  --no-build-isolation -w "$work/pip-wheel" bindings/python
after=$(tree_state)

wheels=("$target"/wheels/*.whl)
sdists=("$target"/wheels/*.tar.gz)
wheel=${wheels[0]}
sdist=${sdists[0]}
name=$(basename "$wheel")
check "one wheel and one sdist" test ${#wheels[@]} -eq 1 -a ${#sdists[@]} -eq 1 -a -f "$wheel" -a -f "$sdist"
check "the wheel is tagged manylinux: $name" \
  bash -c "[[ '$name' =~ ^quotagate-[0-9.]+-py3-none-manylinux_2_[0-9]+_x86_64(\\.manylinux[_0-9a-z]+)*\\.whl$ ]]"
check "the builds left nothing new in the checkout (git status, ignored files included)" \
  test "$before" = "$after"
unzip -q "$work"/pip-wheel/*.whl -d "$work/pip-wheel/unpacked"
check "pip wheel bindings/python ships the stripped library too" \
  bash -c "! readelf -S '$work/pip-wheel/unpacked/quotagate/libquotagate.so' | grep -qE '\\.symtab|\\.debug_'"
[[ $before == "$after" ]] || diff <(echo "$before") <(echo "$after") || true

unzip -q "$wheel" -d "$work/wheel"
library=$work/wheel/quotagate/libquotagate.so
check "the WHEEL file carries the manylinux tag" grep -qE '^Tag: py3-none-manylinux_2_[0-9]+_x86_64' "$work"/wheel/*.dist-info/WHEEL
check "the metadata states the license as an SPDX expression" \
  grep -qx 'License-Expression: MIT OR Apache-2.0' "$work"/wheel/*.dist-info/METADATA
check "the library in the wheel is stripped: $(stat -c %s "$library") bytes, under 10 MB" \
  bash -c "test \$(stat -c %s '$library') -lt 10000000 && ! readelf -S '$library' | grep -qE '\\.symtab|\\.debug_'"
check "the wheel is $(stat -c %s "$wheel") bytes" test "$(stat -c %s "$wheel")" -lt 5000000

tar tzf "$sdist" | sed 's|^[^/]*/||' >"$work/sdist.txt"
check "the sdist carries the crate in rust/ and the Python sources" \
  bash -c "for f in setup.py pyproject.toml src/quotagate/_native.py rust/Cargo.toml rust/Cargo.lock rust/build.rs rust/src/lib.rs rust/src/ffi/mod.rs; do grep -qx \"\$f\" '$work/sdist.txt' || { echo \"missing \$f\"; exit 1; }; done"
check "the sdist carries no tests, keys or build output" \
  bash -c "! grep -E '^(tests|rust/tests|rust/target|build)/|\\.egg-info/|\\.(key|pem|pfx)$' '$work/sdist.txt'"

echo "== installing the wheel into a fresh venv outside the repository"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$wheel"
cat >"$work/use.py" <<'PY'
import os
import sys

import quotagate
from quotagate.testing import Simulator

library = os.path.realpath(quotagate.library_path())
assert library.startswith(os.path.realpath(sys.prefix)), library
print("loaded", library, "version", quotagate.library_version(), "features", sorted(quotagate.features()))
assert quotagate.features() == {"sim", "pfx", "redis"}

limiter = quotagate.Limiter([(2, 60)])
limiter.acquire("machines", timeout=1)
assert limiter.try_acquire("machines")
assert not limiter.try_acquire("machines")  # the third call of the minute waits
limiter.close()

with Simulator(machines=30) as sim:
    client = quotagate.Client(sim.tenant_id, sim.client_id, sim.client_secret,
                              base_url=sim.url, authority=sim.authority)
    machines = list(client.paginate("/api/machines"))
    assert len(machines) == 30, len(machines)
    client.close()
print("limiter and simulator calls through the installed wheel: ok")
PY
check "the installed wheel imports, and runs a limiter call and a simulator call" \
  bash -c "cd '$work' && env -u QUOTAGATE_LIBRARY -u PYTHONPATH '$work/venv/bin/python' use.py"

check_summary
