#!/usr/bin/env bash
# Tests the C ABI from C and C++: builds the library with cargo, then runs the C tests
# (tests/c/limiter_test.c; tests/c/client_test.c and tests/c/credentials_test.c against
# the library's simulator) linked statically, under AddressSanitizer and
# UndefinedBehaviorSanitizer, and under valgrind; links them against the shared library;
# compiles the header as C++ (tests/c/header_cpp_test.cpp); and compiles and runs
# tests/c/header_std_test.c in every C and C++ standard from C89 and C++98 on.
#
# Usage: scripts/test-c.sh        (honours CARGO_TARGET_DIR; binaries go to <target>/c-tests)
# Needs: cargo, cc, c++ (gcc/g++), valgrind.
#
# A compile error stops the script at once. A failing test run does not: every section
# runs, so one run shows everything, and the script exits 1 at the end if any failed.
#
# Leak suppressions: none. LeakSanitizer and valgrind report no Rust-internal one-time
# allocations here (thread-locals are freed when their thread exits, and what parking_lot
# keeps for the process stays reachable from a global), so every reported leak is real.
# The leak-canary section checks on every run that a leaked handle is indeed reported.
# valgrind does not list "possibly lost" blocks (never counted as errors): the
# thread-local blocks of threads that are still ending or cached by glibc at exit (the
# simulator's, and those ureq starts to resolve names) show up as such.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
LIB_DIR="$TARGET_DIR/debug"
OUT="$TARGET_DIR/c-tests"
STATIC_LIB="$LIB_DIR/libquotagate.a"
LIBS=(-lpthread -ldl -lm)
CFLAGS=(-std=c11 -Wall -Wextra -Wpedantic -Werror -g -Iinclude)
CXXFLAGS=(-std=c++17 -Wall -Wextra -Wpedantic -Werror -g -Iinclude)
SANITIZE=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
VALGRIND=(valgrind -q --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite,indirect
    --error-exitcode=1)
# A test run that hangs is a failure, not a stuck script.
RUN_LIMIT=(timeout 300)

started=$SECONDS
failed=()

section() {
    printf '\n==== %s ====\n' "$*"
}

# run NAME COMMAND...: runs a test binary and records its failure.
run() {
    local name=$1
    shift
    local t0=$SECONDS
    if "${RUN_LIMIT[@]}" "$@"; then
        echo "---> $name: passed ($((SECONDS - t0)) s)"
    else
        echo "---> $name: FAILED (exit $?, $((SECONDS - t0)) s)"
        failed+=("$name")
    fi
}

# expect_leak NAME PATTERN COMMAND...: the command must fail and print PATTERN.
expect_leak() {
    local name=$1 pattern=$2
    shift 2
    local log="$OUT/$name.log"
    if "${RUN_LIMIT[@]}" "$@" >"$log" 2>&1; then
        echo "---> $name: FAILED: the deliberate leak went unreported (log: $log)"
        failed+=("$name")
    elif grep -q "$pattern" "$log"; then
        echo "---> $name: the deliberate leak was reported, as it must be"
    else
        cat "$log"
        echo "---> $name: FAILED: the run failed without reporting the leak"
        failed+=("$name")
    fi
}

for tool in cargo cc c++ valgrind timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "test-c.sh: $tool is required but not installed" >&2
        exit 2
    fi
done

section "Building the library (cargo build, target dir: $TARGET_DIR)"
cargo build
mkdir -p "$OUT"

# The C test programs; each prints one closing line "N passed, N failed".
C_TESTS=(limiter_test client_test hardening_test)

section "C tests, static library"
for t in "${C_TESTS[@]}"; do
    cc "${CFLAGS[@]}" "tests/c/$t.c" "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/$t"
done
for t in "${C_TESTS[@]}"; do
    run "C $t" "$OUT/$t"
done

section "C tests under AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer"
for t in "${C_TESTS[@]}"; do
    cc "${CFLAGS[@]}" "${SANITIZE[@]}" "tests/c/$t.c" "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/${t}_asan"
done
export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
for t in "${C_TESTS[@]}"; do
    run "C $t (sanitizers)" "$OUT/${t}_asan"
done

section "C tests under valgrind"
for t in "${C_TESTS[@]}"; do
    run "C $t (valgrind)" "${VALGRIND[@]}" "$OUT/$t"
done

section "Leak canary: both leak checks must report a leaked handle"
cc "${CFLAGS[@]}" "${SANITIZE[@]}" tests/c/leak_canary.c "$STATIC_LIB" "${LIBS[@]}" \
    -o "$OUT/leak_canary_asan"
cc "${CFLAGS[@]}" tests/c/leak_canary.c "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/leak_canary"
expect_leak "leak canary (LeakSanitizer)" "ERROR: LeakSanitizer: detected memory leaks" \
    "$OUT/leak_canary_asan"
expect_leak "leak canary (valgrind)" "definitely lost" "${VALGRIND[@]}" "$OUT/leak_canary"

section "Shared library: every function of the header is exported and links"
declared=$(grep -oE '^[a-z_0-9 ]+[ *]qg_[a-z_]+\(' include/quotagate.h | grep -oE 'qg_[a-z_]+\($' |
    tr -d '(' | sort -u)
exported=$(nm -D --defined-only "$LIB_DIR/libquotagate.so" | awk '{print $NF}' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [[ -n "$missing" ]]; then
    echo "---> not exported by libquotagate.so: $missing"
    failed+=("shared library exports")
else
    echo "---> all $(echo "$declared" | wc -l) functions of the header are exported"
fi
# A program asks the loader for the library's soname, libquotagate.so.0 (docs/abi.md); in
# the build tree that is a link to make, as README.md says (scripts/install makes it).
soname=$(readelf -d "$LIB_DIR/libquotagate.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [[ ${soname:?libquotagate.so has no soname} != libquotagate.so ]]; then
    ln -sfn libquotagate.so "$LIB_DIR/$soname"
fi
for t in "${C_TESTS[@]}"; do
    cc "${CFLAGS[@]}" "tests/c/$t.c" -L "$LIB_DIR" -lquotagate \
        -Wl,-rpath,"$(cd "$LIB_DIR" && pwd)" "${LIBS[@]}" -o "$OUT/${t}_shared"
    if ! readelf -d "$OUT/${t}_shared" | grep -q 'NEEDED.*libquotagate'; then
        echo "---> ${t}_shared does not load libquotagate.so"
        failed+=("shared library link ($t)")
    fi
done
# The full suites already ran three times on the same code; the tests that do not sleep
# are enough to show the shared library loads and answers.
run "C limiter_test (shared library)" "$OUT/limiter_test_shared" last_error_message version \
    result_str builder null_arguments bad_values null_key_is_the_default_bucket set_rates
run "C client_test (shared library)" "$OUT/client_test_shared" sim_api builder_arguments \
    builder_settings_take_effect shared_limiter requests send_and_responses paging body_limit \
    client_stats secret_never_shown

section "C: the README's example (examples/c/throttled_calls.c) against the simulator"
cc "${CFLAGS[@]}" examples/c/throttled_calls.c "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/throttled_calls"
run "C example" env -u QUOTAGATE_TENANT_ID "$OUT/throttled_calls"

section "C: credentials, clouds and in-flight caps against the simulator"
# Run from the repository's root: it reads the test certificates in tests/data. Under
# valgrind, x509-parser's OID registry (a lazy static of the PFX reader) would show as
# "possibly lost"; definite and indirect leaks are still reported and fail the run.
cc "${CFLAGS[@]}" tests/c/credentials_test.c "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/credentials_test"
cc "${CFLAGS[@]}" "${SANITIZE[@]}" tests/c/credentials_test.c "$STATIC_LIB" "${LIBS[@]}" \
    -o "$OUT/credentials_test_asan"
run "C credentials tests" "$OUT/credentials_test"
run "C credentials tests (sanitizers)" "$OUT/credentials_test_asan"
run "C credentials tests (valgrind)" "${VALGRIND[@]}" --show-possibly-lost=no \
    "$OUT/credentials_test"

section "C++: the header compiles as C++17 and links"
c++ "${CXXFLAGS[@]}" tests/c/header_cpp_test.cpp "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/header_cpp_test"
run "C++ header test" "$OUT/header_cpp_test"

section "The header in every standard: C89 to C17, C++98 to C++20, -pedantic -Werror"
for std in c89 c99 c11 c17; do
    cc "-std=$std" -Wall -Wextra -pedantic -Werror -Iinclude tests/c/header_std_test.c \
        "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/header_$std"
    run "header as $std" "$OUT/header_$std"
done
for std in c++98 c++11 c++14 c++17 c++20; do
    c++ "-std=$std" -Wall -Wextra -pedantic -Werror -Iinclude -x c++ tests/c/header_std_test.c \
        -x none "$STATIC_LIB" "${LIBS[@]}" -o "$OUT/header_$std"
    run "header as $std" "$OUT/header_$std"
done

section "Summary ($((SECONDS - started)) s)"
if ((${#failed[@]} > 0)); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all C and C++ tests passed"
