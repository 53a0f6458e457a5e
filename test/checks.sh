# Shared by the end-to-end suites (test-e2e.sh, test-journey.sh): sourced,
# never run. Each check prints "ok - ..." or "not ok - ..." and counts it;
# a suite ends with `summary`, whose line "N passed, M failed" CI reads.
#
# Runs as an ordinary user with squish on PATH (scripts/test arranges both).

suite=$(basename "$0")
if [ "$(id -u)" = 0 ]; then
  echo "$suite: run it as an ordinary user (scripts/test does)" >&2
  exit 2
fi
command -v squish >/dev/null || { echo "$suite: squish is not on PATH" >&2; exit 2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; [ -n "${2:-}" ] && echo "#   $2"; }
check() { # check "description" command...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else not_ok "$what" "failed: $*"; fi
}
eventually() { # eventually "description" command...: retry for up to 10 s
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then ok "$what"; return 0; fi
    sleep 0.1
  done
  not_ok "$what" "never true: $*"
}
status_is() { # status_is "description" CODE command...: the command exits CODE
  # Its output is kept in $work/out and $work/err for the checks after it.
  local what=$1 want=$2; shift 2
  "$@" >"$work/out" 2>"$work/err"
  local got=$?
  if [ "$got" = "$want" ]; then ok "$what"; else not_ok "$what" "exit $got, not $want: $* ($(head -c 300 "$work/err"))"; fi
}
http() { curl -sf --max-time 2 "http://127.0.0.1:$1/${2:-}"; }
summary() { echo "$passed passed, $failed failed"; [ "$failed" = 0 ]; }
