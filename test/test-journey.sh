#!/usr/bin/env bash
# A user's journey: every verb, flag and exit code README documents, driven
# through the `squish` command against a real daemon (rootless, real bwrap
# and slirp4netns), read the way a newcomer reads it. Each check names the
# habit it holds squish to (podman's, compose's, the original squish's).
#
# Runs as an ordinary user with squish on PATH (scripts/test arranges both).
# Every check prints "ok - ..." or "not ok - ..."; the last line is
# "N passed, M failed" and the exit status is non-zero if anything failed.
set -uo pipefail

# shellcheck source=checks.sh
source "$(dirname "$0")/checks.sh"

work=$(mktemp -d /tmp/squish-journey.XXXXXX)
export SQUISH_SOCKET="$work/squish.sock"
manifests="$work/manifests"
state="$work/state"
mkdir -p "$manifests" "$work/site" "$work/app"
echo "hello from the journey" > "$work/site/index.html"

site_port=$(free_port)
sdk_port=$(free_port)
metrics_port=$(free_port)
registry_port=$(free_port)

field() { # field NAME KEY: a field of NAME's row in ps -a --json
  squish ps -a --json | python3 -c "import json,sys; print(next((c.get('$2') for c in json.load(sys.stdin) if c['name']=='$1'), ''))"
}
one_line() { [ "$(wc -l < "$1")" -le 1 ] && ! grep -q Traceback "$1"; }

daemon_pid=""
start_daemon() {
  squish daemon --manifests "$manifests" --state-dir "$state" \
    --metrics-addr "127.0.0.1:$metrics_port" --backoff-initial 1 --resync 0.5 \
    --registry "http://127.0.0.1:$registry_port/{name}/{version}.tar.gz" \
    >>"$work/daemon.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 1 100); do squish status >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "the daemon did not come up:"; cat "$work/daemon.log"; return 1
}
daemon_status=""
stop_daemon() {
  kill "$daemon_pid" 2>/dev/null
  wait "$daemon_pid" 2>/dev/null
  daemon_status=$?
  daemon_pid=""
}
registry_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# -- before any daemon ------------------------------------------------------------
status_is "--version exits 0" 0 squish --version
check "--version names squish" grep -q '^squish [0-9]' "$work/out"
status_is "no daemon: exit 3, the daemon is unreachable" 3 squish ps
check "... in one line saying how to start it" grep -q 'squish daemon --manifests DIR' "$work/err"
status_is "a usage error exits 2" 2 squish ps --no-such-flag
status_is "a verb without its argument exits 2" 2 squish stop
status_is "--help exits 0" 0 squish --help
check "--help lists the exit codes" eval "grep -q '^  3 ' '$work/out' && grep -q '^  2 ' '$work/out'"
status_is "every verb's help ends with an example" 0 squish ps --help
check "... ps --help shows one" grep -q '^Examples\?:' "$work/out"
status_is "bash completion is generated" 0 squish completion bash
check "... and loads in bash" bash -c "source '$work/out' && complete -p squish"

# validate, with several errors in one file: one line each, with its line number
cat > "$work/bad.toml" <<'EOF'
network = "carrier-pigeon"

[run]
command = "/bin/true"
args = "not a list"

[[ports]]
container = 80
host = 99999
EOF
status_is "validate of a bad file exits 1" 1 squish validate "$work/bad.toml"
check "validate reports every error, one per line" test "$(grep -c "bad.toml:" "$work/err")" -ge 3
check "... each with its line number" grep -q "bad.toml:9: ports\[0\].host" "$work/err"
status_is "validate --json exits 1 too" 1 squish validate --json "$work/bad.toml"
check "... listing every error" python3 -c "import json,sys; d=json.load(open('$work/out')); assert len(d['files'][0]['errors']) >= 3"

start_daemon || exit 1

# -- create, ps, names ------------------------------------------------------------
cat > "$work/site.toml" <<EOF
[layers]
site = { path = "./site", target = "/srv" }
[run]
command = "/bin/busybox"
args = ["httpd", "-f", "-p", "8080", "-h", "/srv"]
[[ports]]
container = 8080
host = $site_port
EOF
sed "s/$site_port/$sdk_port/" "$work/site.toml" > "$work/sdk.toml"
printf 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n' > "$work/s.toml"
site_id=$(cd "$work" && squish create site.toml)
sdk_id=$(cd "$work" && squish create sdk.toml)
s_id=$(cd "$work" && squish create s.toml)
check "create prints the id" grep -Eq '^[0-9a-f]{64}$' <<<"$site_id"
eventually "site answers through its forward" http "$site_port"
status_is "ps exits 0" 0 squish ps
check "ps shows the bind address of a port, as podman does" grep -q "127.0.0.1:$site_port->8080/tcp" "$work/out"
check "ps rows start with the 7-character id" grep -q "^${site_id:0:7} " "$work/out"
status_is "--json works before the verb" 0 squish --json ps
check "... and gives JSON" python3 -c "import json; assert len(json.load(open('$work/out'))) == 3"
status_is "ps --format takes a field template" 0 squish ps --format '{name}:{ports[0].host}'
check "... and fills it" grep -qx "site:$site_port" "$work/out"
status_is "ps --format with an unknown field is an error" 1 squish ps --format '{nope}'
check "... in one line naming the fields" eval "one_line '$work/err' && grep -q 'no field' '$work/err'"

# inspect: it works, for every container, by name and id, several at once
status_is "inspect by name and id prefix, several at once" 0 squish inspect site "${sdk_id:0:8}" s
check "inspect prints a JSON array of all three" python3 -c "import json; d=json.load(open('$work/out')); assert [c['name'] for c in d] == ['site','sdk','s'], d"
status_is "inspect --format" 0 squish inspect --format '{applied.command}' site
check "... gives the command" grep -qx /bin/busybox "$work/out"
status_is "inspect of an unknown name exits 1" 1 squish inspect nosuch
check "... saying no such container" grep -q "no such container 'nosuch'" "$work/err"

# stop: an exact name, never a prefix of names
status_is "stop s stops the container named s" 0 squish stop s
check "... and only it" eval "[ \"\$(field site phase)\" = running ] && [ \"\$(field sdk phase)\" = running ] && [ \"\$(field s phase)\" = stopped ]"
status_is "stopping a stopped container succeeds, as in podman" 0 squish stop s
status_is "starting a running container succeeds" 0 squish start site
check "... and leaves it as it was" test "$(field site id)" = "$site_id"
# An id prefix two containers share is refused and touches nothing.
shared=$(python3 - "$site_id" "$sdk_id" <<'EOF'
import sys
a, b = sys.argv[1], sys.argv[2]
n = 0
while n < len(a) and a[n] == b[n]:
    n += 1
print(a[:n])
EOF
)
if [ -n "$shared" ]; then
  status_is "an ambiguous id prefix exits 1" 1 squish stop "$shared"
  check "... naming the candidates" eval "grep -q 'ambiguous' '$work/err' && grep -q sdk '$work/err' && grep -q site '$work/err'"
  check "... and stops nothing" eval "[ \"\$(field site phase)\" = running ] && [ \"\$(field sdk phase)\" = running ]"
else
  status_is "a prefix of nothing is no such container" 1 squish stop 0000000000
fi
status_is "stop several at once, by name and id" 0 squish stop sdk "${site_id:0:10}"
check "... prints both ids" eval "grep -qx '$sdk_id' '$work/out' && grep -qx '$site_id' '$work/out'"
status_is "start several at once" 0 squish start sdk site
check "... both run again, under new ids" eval "[ \"\$(field site phase)\" = running ] && [ \"\$(field site id)\" != '$site_id' ]"
eventually "... and site answers again" http "$site_port"
status_is "stop with one unknown name goes on with the others and exits 1" 1 squish stop nosuch sdk
check "... sdk was stopped" test "$(field sdk phase)" = stopped

# A user's stop outlives a daemon restart (README: until start or an edit).
stop_daemon
start_daemon || exit 1
eventually "after a restart site runs again" http "$site_port"
sleep 1.2
check "... and the stopped sdk stays stopped" test "$(field sdk phase)" = stopped
check "... s too" test "$(field s phase)" = stopped
status_is "start brings it back" 0 squish start sdk
eventually "... serving" http "$sdk_port"

# -- ps at 80 columns, REASON once, status ---------------------------------------
printf 'x%.0s' $(seq 1 200) > "$work/longkey"
printf '%s = 1\n[run]\ncommand = "/bin/true"\n' "$(cat "$work/longkey")" > "$manifests/broken.toml"
eventually "an invalid squishfile shows in ps -a" eval "squish ps -a | grep -q broken"
reason=$(squish ps -a | grep '^-  *broken')
check "REASON says the manifest error once" test "$(grep -o 'unknown key' <<<"$reason" | wc -l)" = 1
script -qec "stty cols 80; squish ps -a" /dev/null | sed 's/\x1b\[[0-9;]*m//g; s/\r$//' > "$work/tty"
check "on an 80-column terminal every row is one line of at most 80" \
  python3 -c "lines=open('$work/tty').read().splitlines(); assert len(lines) == 5, lines; assert all(len(l) <= 80 for l in lines), lines"
check "... the long reason ends in an ellipsis" grep -q '…$' "$work/tty"
script -qec "stty cols 80; squish ps -a --no-trunc" /dev/null > "$work/tty-full"
check "--no-trunc shows the whole id" grep -q "$(field sdk id)" "$work/tty-full"
status_is "status exits 0" 0 squish status
check "status is a readable summary" eval "grep -q '^containers: .*running' '$work/out' && ! grep -q '[{}]' '$work/out' && grep -q 'up [0-9]' '$work/out'"
rm "$manifests/broken.toml"

# -- an rw file layer the container writes (the original squish's e2e case 006) ---
echo "start" > "$work/app/scratch"
cat > "$work/writer.toml" <<'EOF'
network = "none"
[layers]
scratch = { path = "./app/scratch", target = "/app/scratch", rw = true }
[run]
command = "/bin/sh"
args = ["-c", "while true; do echo tick >> /app/scratch; sleep 0.1; done"]
EOF
writer_id=$(cd "$work" && squish create writer.toml)
sleep 2.5  # five resyncs
check "a container writing its rw file layer is never replaced" test "$(field writer id)" = "$writer_id"
check "... and its writes reach the host" test "$(grep -c tick "$work/app/scratch")" -ge 10
check "... no 'replaced' event in the daemon's log" eval "! grep -q 'writer.*replaced' '$work/daemon.log'"

# -- logs -------------------------------------------------------------------------
cat > "$work/talker.toml" <<'EOF'
network = "none"
[run]
command = "/bin/sh"
args = ["-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done; sleep 1000"]
EOF
(cd "$work" && squish create talker.toml >/dev/null)
eventually "logs shows what the container printed" eval "squish logs talker | grep -q 'line 5'"
status_is "logs -n 2" 0 squish logs -n 2 talker
check "... the last two lines" test "$(cat "$work/out")" = "$(printf 'line 4\nline 5')"
status_is "logs -t" 0 squish logs -t talker
check "... each line starts with its time" grep -Eq '^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z line 1$' "$work/out"
third=$(grep 'line 3$' "$work/out" | cut -d' ' -f1)
status_is "logs --since a time from -t" 0 squish logs --since "$third" talker
check "... starts at that line" test "$(head -1 "$work/out")" = "line 3"
status_is "logs --until that time" 0 squish logs --until "$third" talker
check "... ends with that line" test "$(tail -1 "$work/out")" = "line 3"
status_is "logs --since 1h" 0 squish logs --since 1h talker
check "... is everything" test "$(wc -l < "$work/out")" = 5
status_is "logs of an unknown name exits 1" 1 squish logs nosuch
check "... saying no such container" grep -q "no such container 'nosuch'" "$work/err"
status_is "logs --since nonsense exits 1" 1 squish logs --since yesterday-ish talker
check "... in one line" one_line "$work/err"

# -- events -----------------------------------------------------------------------
(squish events --format '{kind} {name}' > "$work/events" 2>&1 &
 echo $! > "$work/events.pid")
sleep 0.5
printf 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n' > "$manifests/late.toml"
eventually "events --format shows a start as it happens" grep -qx 'container.started late' "$work/events"
kill "$(cat "$work/events.pid")" 2>/dev/null

# -- create that fails at once says what it did -------------------------------------
printf 'network = "none"\n[run]\ncommand = "/no/such/program"\n' > "$work/oops.toml"
status_is "create of a command that does not exist exits 1" 1 bash -c "cd '$work' && squish create oops.toml"
check "... and says the file was removed again" grep -q "oops.toml was removed again" "$work/err"
check "... which it was" test ! -e "$manifests/oops.toml"

# -- apply, delete, sources, sync, layers ---------------------------------------------
printf 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n' > "$work/quick.toml"
status_is "apply does not wait" 0 bash -c "cd '$work' && squish apply quick.toml"
eventually "... and the container runs" eval "[ \"\$(field quick phase)\" = running ]"
status_is "delete several at once" 0 squish delete quick late
eventually "... both gone" eval "! squish ps -a | grep -Eq ' (quick|late) '"
status_is "delete of an unknown name exits 1" 1 squish delete nosuch
status_is "sources lists the directory" 0 squish sources
check "... with the manifests directory" grep -q "$manifests" "$work/out"
status_is "sync without a git source exits 1" 1 squish sync
check "... saying there is none" eval "one_line '$work/err' && grep -q 'no git source' '$work/err'"
status_is "network ls with no network named prints the header" 0 squish network ls
check "... and nothing else" eval "[ \"\$(cat '$work/out')\" = 'NAME  SUBNET  GATEWAY  RUNNING  CONTAINERS' ]"
status_is "network inspect of a network nobody names exits 1" 1 squish network inspect nowhere
check "... in one line naming it" eval "one_line '$work/err' && grep -q \"no network 'nowhere'\" '$work/err'"
status_is "network without an action is a usage error" 2 squish network
printf 'networks = ["journey"]\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n' > "$work/member.toml"
status_is "create of a squishfile on a network" 0 squish create "$work/member.toml"
status_is "exec in it passes the command's status on" 5 squish exec member sh -c 'echo inside; exit 5'
check "... and prints its output" grep -qx inside "$work/out"
status_is "exec without a command is a usage error" 2 squish exec member
status_is "exec --timeout kills a command that hangs (124)" 124 squish exec --timeout 0.3 member sleep 100
status_is "network inspect --json of it" 0 squish network inspect journey --json
check "... lists the member with its address" python3 -c "import json; (n,) = json.load(open('$work/out')); assert n['containers'] == ['member'] and n['members'][0]['address'].startswith('10.89.')"
status_is "delete of it" 0 squish delete member
printf 'network = "none"\nnetworks = ["journey"]\n[run]\ncommand = "/bin/true"\n' > "$work/both.toml"
status_is "validate refuses networks with network = none" 1 squish validate "$work/both.toml"
check "... naming the field" grep -q 'both.toml:2: networks: cannot join networks with network = "none"' "$work/err"
printf '[run]\ncommand = "/bin/true"\n[health]\ncommand = ["true"]\ntcp = 5432\n' > "$work/twochecks.toml"
status_is "validate refuses two kinds of health check" 1 squish validate "$work/twochecks.toml"
check "... in one line naming [health] and the kinds" eval "one_line '$work/err' && grep -q \"twochecks.toml:3: health: must have exactly one of 'command' (run inside), 'http' (a GET of a port) or 'tcp' (a connection to a port), got command and tcp\" '$work/err'"
printf '[run]\ncommand = "/bin/true"\n[health]\nhttp = { port = 8080, path = "healthz" }\n' > "$work/badpath.toml"
status_is "validate refuses an http check's path without /" 1 squish validate "$work/badpath.toml"
check "... naming the field" grep -q 'badpath.toml:4: health.http.path: must be a path such as "/healthz"' "$work/err"
status_is "layer ls" 0 squish layer ls
status_is "layer pull from a registry that is down is an error" 1 squish --socket "$SQUISH_SOCKET" layer pull python 3.11
check "... in one line" one_line "$work/err"
mkdir -p "$work/registry"
(cd "$work/registry" && exec python3 -m http.server --bind 127.0.0.1 "$registry_port" >/dev/null 2>&1) &
registry_pid=$!
eventually "a local registry answers" curl -s -o /dev/null "http://127.0.0.1:$registry_port/"
status_is "layer pull of a version the registry lacks exits 1" 1 squish layer pull python 9.99
check "... says it was not found at the URL" eval "grep -q 'not found' '$work/err' && grep -q '9.99.tar.gz' '$work/err' && ! grep -q 'pins no sha256' '$work/err'"
mkdir -p "$work/sdk/bin" && echo "tool" > "$work/sdk/bin/tool"
tar -czf "$work/sdk.tar.gz" -C "$work/sdk" .
status_is "layer import of an archive" 0 squish layer import python 3.12 "$work/sdk.tar.gz"
status_is "layer ls --json" 0 squish layer ls --json
check "... lists the imported layer" python3 -c "import json; assert any(l['name']=='python' and l['version']=='3.12' for l in json.load(open('$work/out')))"
status_is "layer rm of an unused layer" 0 squish layer rm python 3.12
status_is "layer rm of one that is not there exits 1" 1 squish layer rm python 3.12
check "... in one line" one_line "$work/err"
status_is "layer gc" 0 squish layer gc

# -- waiting, volumes, secrets, as a newcomer meets them ------------------------------
printf 'network = "none"\n[run]\ncommand = "/bin/sleep"\nargs = ["1000"]\n[depends_on]\nmissing-database = "healthy"\n[secrets]\ntoken = "not-created-yet"\n' > "$manifests/waiter.toml"
eventually "a container waiting for a secret shows in ps -a as waiting (compose's wait)" \
  eval "squish ps -a | grep -q ' waiter .*waiting '"
script -qec "stty cols 80; squish ps -a" /dev/null | sed 's/\x1b\[[0-9;]*m//g; s/\r$//' > "$work/tty-wait"
check "... on an 80-column terminal its row is one line of at most 80" \
  python3 -c "rows=[l for l in open('$work/tty-wait').read().splitlines() if ' waiter ' in l]; assert len(rows) == 1 and len(rows[0]) <= 80, rows"
check "... with the whole reason in ps -a --json" \
  eval "[ \"\$(field waiter reason)\" = 'waiting for secret not-created-yet: the node has no such secret (squish secret create not-created-yet FILE)' ]"
status_is "volume rm of a volume that does not exist exits 1" 1 squish volume rm no-such-volume
check "... in one line naming it" eval "one_line '$work/err' && grep -q \"no volume 'no-such-volume'\" '$work/err'"
head -c 600000 /dev/zero > "$work/big-secret"
status_is "secret create of a value over 512 KiB exits 1" 1 squish secret create big "$work/big-secret"
check "... in one line saying the limit" eval "one_line '$work/err' && grep -q 'at most 524288' '$work/err'"
status_is "secret rm of a secret that does not exist exits 1" 1 squish secret rm no-such-secret
check "... in one line saying how to make it" \
  eval "one_line '$work/err' && grep -q 'squish secret create no-such-secret FILE' '$work/err'"
for verb in volume secret; do
  status_is "squish $verb --help exits 0" 0 squish "$verb" --help
  check "... and lists its actions" grep -q 'ACTION' "$work/out"
done
rm "$manifests/waiter.toml"

# -- metrics ----------------------------------------------------------------------
curl -sf "http://127.0.0.1:$metrics_port/metrics" > "$work/scrape.txt"
check "a healthy container's restart counter exists at 0" grep -q '^squish_container_restarts_total{container="site"} 0.0' "$work/scrape.txt"
check "each container's state is a gauge" grep -q '^squish_container_state{container="sdk",state="running"} 1.0' "$work/scrape.txt"
check "the daemon's own memory is exported" grep -q '^process_resident_memory_bytes ' "$work/scrape.txt"
check "and its open fds" grep -q '^process_open_fds ' "$work/scrape.txt"

# -- squish run: one squishfile in the foreground -------------------------------------
printf 'network = "none"\n[run]\ncommand = "/bin/sh"\nargs = ["-c", "echo from run; exit 7"]\n' > "$work/once.toml"
status_is "squish run passes on the command's exit status" 7 squish run --state-dir "$work/run-state" "$work/once.toml"
check "... and shows its output" grep -q "from run" "$work/out"

stop_daemon
check "SIGTERM: the daemon exits 0" test "$daemon_status" = 0
status_is "with the daemon gone, exit 3 again" 3 squish status

summary
