#!/usr/bin/env bash
# Tests scripts/install as a C developer uses it: installs into a temporary prefix,
# checks the layout, the soname, the stripped size and the exported symbols, then builds
# and runs tests/install/app.c three ways (pkg-config, pkg-config --static, a CMake
# project with find_package), and checks that a --no-default-features build and its
# installed header agree. DESTDIR staging is checked too.
#
# Usage: scripts/test-install.sh   (honours CARGO_TARGET_DIR)
# Needs: cargo, cc, pkg-config, cmake, readelf, nm, objcopy, strip. A missing one fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$root/$target

for tool in cargo cc pkg-config cmake readelf nm objcopy strip; do
  command -v "$tool" >/dev/null || { echo "test-install.sh: $tool is required: run scripts/install-test-deps" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck source=scripts/check.sh
source scripts/check.sh
soname_of() { readelf -d "$1" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p'; }
needs() { readelf -d "$1" | grep -q "NEEDED.*\[$2\]"; }
size_of() { stat -c %s "$1"; }
# The functions a header declares once preprocessed (its feature macros applied).
declared() {
  echo '#include <quotagate.h>' | cc -E -P -I"$1" -x c - | grep -oE '\bqg_[a-z0-9_]+\(' | tr -d '(' | sort -u
}
exported() { nm -D --defined-only "$1" | awk '{print $NF}' | sort -u; }
same_functions() { # same_functions INCLUDEDIR LIBRARY: the header declares what the library exports
  diff <(declared "$1") <(exported "$2")
}

echo "== scripts/install --prefix $work/prefix"
scripts/install --prefix "$work/prefix"
prefix=$work/prefix
lib=$prefix/lib
version=$(awk -F'"' '/^\[/ { package = ($0 == "[package]") } package && /^version *=/ { print $2; exit }' Cargo.toml)
major=${version%%.*}
real=$lib/libquotagate.so.$version

echo "== the installed files"
check "the header is installed, and is the committed one (a default build has every feature)" \
  cmp "$prefix/include/quotagate.h" include/quotagate.h
check "libquotagate.so.$version is installed with soname libquotagate.so.$major (readelf -d)" \
  test "$(soname_of "$real")" = "libquotagate.so.$major"
check "libquotagate.so.$major and libquotagate.so link to it" \
  test "$(readlink "$lib/libquotagate.so.$major")" = "libquotagate.so.$version" -a \
  "$(readlink -f "$lib/libquotagate.so")" = "$real"
check "the shared library is stripped: $(size_of "$real") bytes, under 10 MB" \
  test "$(size_of "$real")" -lt 10000000
check "its debug info is split off, with a debuglink to it" \
  bash -c "readelf -S '$lib/.debug/libquotagate.so.$version.debug' | grep -q debug_line &&
    readelf --string-dump=.gnu_debuglink '$real' | grep -q 'libquotagate.so.$version.debug'"
check "libquotagate.a is installed without debug info or bitcode: $(size_of "$lib/libquotagate.a") bytes" \
  bash -c "! readelf -S '$lib/libquotagate.a' | grep -qE '\\.debug_info|\\.llvmbc'"
check "the library exports only qg_ functions" \
  bash -c "! nm -D --defined-only '$real' | awk '{print \$NF}' | grep -v '^qg_'"
check "the installed header declares exactly the functions the library exports" \
  same_functions "$prefix/include" "$real"
check "quotagate.pc carries the static link line of rustc --print native-static-libs" \
  grep -qE '^Libs.private: .*-lgcc_s' "$lib/pkgconfig/quotagate.pc"
check "the CMake package files are installed" \
  test -f "$lib/cmake/quotagate/quotagateConfig.cmake" -a -f "$lib/cmake/quotagate/quotagateConfigVersion.cmake"

export PKG_CONFIG_PATH=$lib/pkgconfig
cflags=(-std=c99 -Wall -Wextra -pedantic -Werror)

echo "== C program, with only pkg-config --cflags --libs quotagate"
# shellcheck disable=SC2046 # pkg-config's output is a list of flags
cc "${cflags[@]}" tests/install/app.c $(pkg-config --cflags --libs quotagate) -o "$work/app_pkgconfig"
check "it needs libquotagate.so.$major" needs "$work/app_pkgconfig" "libquotagate.so.$major"
check "without the prefix in the loader's path it does not start (exit 127: README's rpath note)" \
  bash -c "'$work/app_pkgconfig' 2>/dev/null; test \$? -eq 127"
check "it runs with LD_LIBRARY_PATH=\$prefix/lib" env LD_LIBRARY_PATH="$lib" "$work/app_pkgconfig"
# shellcheck disable=SC2046
cc "${cflags[@]}" tests/install/app.c $(pkg-config --cflags --libs quotagate) \
  -Wl,-rpath,"$(pkg-config --variable=libdir quotagate)" -o "$work/app_rpath"
check "it runs with an rpath to the prefix" "$work/app_rpath"

echo "== C program, statically, with pkg-config --static"
# -Bstatic makes -lquotagate mean libquotagate.a; --static adds what the archive needs.
# shellcheck disable=SC2046
cc "${cflags[@]}" tests/install/app.c $(pkg-config --cflags quotagate) -Wl,--as-needed \
  -Wl,-Bstatic -lquotagate -Wl,-Bdynamic $(pkg-config --static --libs quotagate) -o "$work/app_static"
check "it does not need libquotagate.so" bash -c "! readelf -d '$work/app_static' | grep -q 'NEEDED.*libquotagate'"
check "it runs without the prefix in the loader's path" "$work/app_static"
# shellcheck disable=SC2046
check "without Libs.private the archive does not link" \
  bash -c "! cc tests/install/app.c $(pkg-config --cflags quotagate) '$lib/libquotagate.a' -o '$work/app_nolibs' 2>/dev/null"

echo "== C program, with a CMake project: find_package(quotagate CONFIG REQUIRED)"
cmake -S tests/install -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
  -DQG_EXPECTED_VERSION="$version" -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" ||
  { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/cmake" >>"$work/cmake.log" || { cat "$work/cmake.log"; exit 1; }
check "quotagate::quotagate links the shared library" needs "$work/cmake/app_shared" "libquotagate.so.$major"
check "the program linked with quotagate::quotagate runs" "$work/cmake/app_shared"
check "quotagate::static links the archive" \
  bash -c "! readelf -d '$work/cmake/app_static' | grep -q 'NEEDED.*libquotagate'"
check "the program linked with quotagate::static runs" "$work/cmake/app_static"

echo "== DESTDIR stages an install for /opt/quotagate"
DESTDIR=$work/stage scripts/install --prefix /opt/quotagate >/dev/null 2>&1
staged=$work/stage/opt/quotagate
check "the files are under DESTDIR" test -f "$staged/lib/libquotagate.so.$version" -a -f "$staged/include/quotagate.h"
check "quotagate.pc names the prefix, not DESTDIR" grep -qx 'prefix=/opt/quotagate' "$staged/lib/pkgconfig/quotagate.pc"
check "no installed text names DESTDIR" \
  bash -c "! grep -rl '$work/stage' '$staged/lib/pkgconfig' '$staged/lib/cmake'"

echo "== a --no-default-features build and its header agree"
# A debug build in a target directory of its own: the release build stays untouched.
CARGO_TARGET_DIR=$target/no-default-features scripts/install --prefix "$work/minimal" \
  --profile dev --no-default-features
minimal=$work/minimal
check "its header defines no feature macro" bash -c "! grep -q '^#define QG_FEATURE_[A-Z]* ' '$minimal/include/quotagate.h'"
check "its header declares exactly the functions its library exports (no qg_sim_*)" \
  same_functions "$minimal/include" "$minimal/lib/libquotagate.so.$version"
check "the simulator is declared only where QG_FEATURE_SIM is defined" \
  bash -c "declared() { echo '#include <quotagate.h>' | cc -E -P \"\$@\" -x c - | grep -c 'qg_sim_start'; };
    test \"\$(declared -I'$minimal/include')\" = 0 && test \"\$(declared -DQG_FEATURE_SIM -I'$minimal/include')\" = 1"
cc "${cflags[@]}" tests/install/app.c -I"$minimal/include" -L"$minimal/lib" -lquotagate \
  -Wl,-rpath,"$minimal/lib" -o "$work/app_minimal"
check "a program built against it runs, and its features agree with the header" "$work/app_minimal"

check_summary
