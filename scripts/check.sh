# Sourced by scripts/test-install.sh and scripts/test-wheel.sh. `check DESCRIPTION
# COMMAND...` runs the command and prints "ok" or "FAIL" with the description;
# `check_summary` prints "N passed, N failed" and fails if any check did.
passed=0
failed=0

check() {
  local what=$1
  shift
  if "$@"; then
    echo "ok   $what"
    passed=$((passed + 1))
  else
    echo "FAIL $what"
    failed=$((failed + 1))
  fi
}

check_summary() {
  echo "$passed passed, $failed failed"
  ((failed == 0))
}
