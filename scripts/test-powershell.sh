#!/usr/bin/env bash
# Tests of the PowerShell module (bindings/powershell):
#  1. the module's C# interop files, compiled by Mono's mcs with tests/InteropTests.cs and
#     run against the debug build of the library (every P/Invoke, for real);
#  2. a parse check of every .ps1, .psm1 and .psd1 with a pinned tree-sitter grammar;
#  3. the Pester tests of every cmdlet, when pwsh is installed.
# Build outputs go to $CARGO_TARGET_DIR (default target/) under powershell/.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
out="$target/powershell"
mkdir -p "$out"
case "$(uname -s)" in
  Darwin) lib_name=libquotagate.dylib ;;
  MINGW* | MSYS* | CYGWIN*) lib_name=quotagate.dll ;;
  *) lib_name=libquotagate.so ;;
esac

echo "-- building the library (debug)"
cargo build --quiet
lib="$(cd "$target/debug" && pwd)/$lib_name"

echo "-- interop tests (Mono)"
for tool in mcs mono; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-test-deps" >&2; exit 1; }
done
mcs -langversion:7.2 -warn:4 -warnaserror -r:System.dll -r:System.Core.dll \
  -out:"$out/InteropTests.exe" \
  bindings/powershell/QuotaGate/Interop/*.cs bindings/powershell/tests/InteropTests.cs
mono --debug "$out/InteropTests.exe" "$lib"

echo "-- parse check of the PowerShell files"
venv="$out/parse-venv"
requirements=bindings/powershell/tests/requirements-parse.txt
if ! cmp -s "$requirements" "$venv/requirements-parse.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements-parse.txt"
fi
mapfile -t scripts < <(find bindings scripts -type f \( -name '*.ps1' -o -name '*.psm1' -o -name '*.psd1' \) | sort)
"$venv/bin/python" bindings/powershell/tests/parse_check.py "${scripts[@]}"

echo "-- Pester tests"
if command -v pwsh >/dev/null; then
  QUOTAGATE_LIBRARY="$lib" pwsh -NoProfile -NonInteractive -Command \
    "Invoke-Pester -Path bindings/powershell/tests -CI"
else
  echo "SKIPPED: Pester tests need pwsh, which is not installed"
fi
