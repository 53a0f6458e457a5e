#!/usr/bin/env bash
# End-to-end: a real squish daemon, rootless, driven through the CLI and
# checked from outside (HTTP through forwards, files on the host, /proc,
# a Prometheus scrape). The original squish's entry point name.
#
# Runs as an ordinary user with squish on PATH (scripts/test arranges both).
# Every check prints "ok - ..." or "not ok - ..."; the last line is
# "N passed, M failed" and the exit status is non-zero if anything failed.
set -uo pipefail

# shellcheck source=checks.sh
source "$(dirname "$0")/checks.sh"

work=$(mktemp -d /tmp/squish-e2e.XXXXXX)
export SQUISH_SOCKET="$work/squish.sock"
manifests="$work/manifests"
state="$work/state"
mkdir -p "$manifests" "$work/site" "$work/data"
echo "hello from the e2e site" > "$work/site/index.html"
echo "read-only config" > "$work/app.conf"

web_port=$(free_port)
metrics_port=$(free_port)

body_is() { [ "$(http "$1" "${3:-}")" = "$2" ]; }
ps_count() { squish ps | tail -n +2 | grep -c . ; }
ps_field() { squish ps --json | python3 -c "import json,sys; print(next((c.get('$2') for c in json.load(sys.stdin) if c['name']=='$1'), ''))"; }
psa_field() { squish ps -a --json | python3 -c "import json,sys; print(next((c.get('$2') for c in json.load(sys.stdin) if c['name']=='$1'), ''))"; }

daemon_pid=""
start_daemon() {
  squish daemon --manifests "$manifests" --state-dir "$state" \
    --metrics-addr "127.0.0.1:$metrics_port" --backoff-initial 1 --resync 1 \
    >>"$work/daemon.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 1 100); do squish ps >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "the daemon did not come up:"; cat "$work/daemon.log"; return 1
}
descendants() { # every pid below $1
  local kids
  kids=$(cat /proc/"$1"/task/*/children 2>/dev/null)
  for kid in $kids; do echo "$kid"; descendants "$kid"; done
}
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

start_daemon || exit 1

# -- create / ps / stop (the original contract) ---------------------------------
cat > "$work/web.toml" <<EOF
[layers]
site = { path = "./site", target = "/app/site" }
conf = { path = "./app.conf", target = "/etc/app.conf" }
data = { path = "./data", target = "/data", rw = true }

[run]
command = "/bin/sh"
args = ["-c", "echo \$GREETING > /data/greeting; echo pid=\$\$ > /data/pid; cat /etc/app.conf > /data/conf; touch /etc/x 2>/data/ro-error; exec httpd -f -p 8080 -h /app/site"]

[env]
GREETING = "hi there"

[[ports]]
container = 8080
host = $web_port
EOF
id=$(cd "$work" && squish create web.toml)
check "create prints a 64-hex id" grep -Eq '^[0-9a-f]{64}$' <<<"$id"
check "the manifest landed in the watched directory" test -f "$manifests/web.toml"
check "ps header starts with ID" eval "squish ps | head -1 | grep -q '^ID'"
check "ps shows one running container" test "$(ps_count)" = 1
check "ps line starts with the short id, then name, then pid" \
  eval "squish ps | tail -1 | awk '{exit !(\$1 == \"${id:0:7}\" && \$2 == \"web\" && \$3 ~ /^[0-9]+\$/)}'"
eventually "HTTP through the forward" body_is "$web_port" "hello from the e2e site"
check "env reaches the command" test "$(cat "$work/data/greeting")" = "hi there"
check "the command is pid 2" test "$(cat "$work/data/pid")" = "pid=2"
check "a ro file bind reads" test "$(cat "$work/data/conf")" = "read-only config"
check "the root is read-only" grep -q "Read-only file system" "$work/data/ro-error"
check "an rw bind writes through to the host" test -s "$work/data/greeting"
check "exec runs inside the container: its files, its env, its pid namespace" \
  test "$(squish exec web sh -c 'cat /etc/app.conf; echo $GREETING; ps -o args | grep -c "^httpd"')" \
  = "$(printf 'read-only config\nhi there\n1')"
squish exec web -- sh -c 'exit 3'
check "exec exits with the command's status" test $? = 3
check "exec runs a program with no shell, found on the container's PATH" \
  eval "squish exec web cat /etc/os-release | grep -q 'squish busybox base'"

stopped=$(squish stop web)
check "stop prints the id" test "$stopped" = "$id"
check "ps shows nothing running after stop" test "$(ps_count)" = 0
check "ps -a shows it stopped" test "$(psa_field web phase)" = stopped
squish exec web true 2>"$work/exec.err"
check "exec in a stopped container exits 1, saying it is not running" \
  eval "[ $? = 1 ] && grep -q 'web is not running (stopped)' '$work/exec.err'"
sleep 1.5
check "a stopped container stays stopped through a resync" test "$(ps_count)" = 0
id2=$(cd "$work" && squish create web.toml)
check "create after stop runs again under a new id" eval "[ -n '$id2' ] && [ '$id2' != '$id' ]"
eventually "it serves again" body_is "$web_port" "hello from the e2e site"

# -- edits ------------------------------------------------------------------------
sed -i 's/GREETING = "hi there"/GREETING = "edited"/' "$manifests/web.toml"
eventually "an edit replaces the container" eval "[ \"\$(cat '$work/data/greeting')\" = edited ]"
id3=$(ps_field web id)
check "the replacement has a new id" test "$id3" != "$id2"
eventually "the replacement serves" body_is "$web_port" "hello from the e2e site"

cp "$manifests/web.toml" "$work/web.good"
printf '[run]\ncommand = ""\n' > "$manifests/web.toml"
eventually "a broken edit shows its error in ps -a" eval "squish ps -a | grep -q 'run.command'"
check "the old version keeps serving" body_is "$web_port" "hello from the e2e site"
check "and keeps its id" test "$(ps_field web id)" = "$id3"
cp "$work/web.good" "$manifests/web.toml"
sed -i 's/GREETING = "edited"/GREETING = "fixed"/' "$manifests/web.toml"
eventually "the fix is applied" eval "[ \"\$(cat '$work/data/greeting')\" = fixed ]"

# -- crashes ----------------------------------------------------------------------
cat > "$manifests/crash.toml" <<EOF
[run]
command = "/bin/sh"
args = ["-c", "sleep 0.2; exit 3"]
EOF
eventually "a crash loop is restarted" eval "[ \"\$(psa_field crash restarts)\" -ge 2 ]"
eventually "and backs off" eval "[ \"\$(psa_field crash phase)\" = backoff ]"
rm "$manifests/crash.toml"
eventually "delete by removing the file -> gone" eval "! squish ps -a | grep -q crash"

pid=$(ps_field web pid)
kill -9 "$pid"
eventually "a killed process comes back" eval "p=\$(ps_field web pid); [ -n \"\$p\" ] && [ \"\$p\" != '$pid' ]"
eventually "and serves" body_is "$web_port" "hello from the e2e site"

# -- metrics ----------------------------------------------------------------------
curl -sf "http://127.0.0.1:$metrics_port/metrics" > "$work/scrape.txt"
scrape=$(cat "$work/scrape.txt")
check "metrics: squish_containers running is 1" grep -q '^squish_containers{state="running"} 1.0' <<<"$scrape"
check "metrics: restarts counted" grep -q '^squish_container_restarts_total{container="web"}' <<<"$scrape"
if command -v promtool >/dev/null; then
  promtool check metrics < "$work/scrape.txt" > "$work/promtool.txt" 2>&1
  rc=$?
  check "promtool check metrics reports nothing" eval "[ $rc = 0 ] && [ ! -s '$work/promtool.txt' ]"
else
  not_ok "promtool is installed (run scripts/setup --test as root)"
fi

# -- named networks ---------------------------------------------------------------
mkdir -p "$work/net"
net_port=$(free_port)
cat > "$manifests/db.toml" <<EOF
networks = ["backend"]
[layers]
site = { path = "$work/site", target = "/app/site" }
[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/app/site"]
[[ports]]
container = 8080
host = $net_port
EOF
cat > "$manifests/app.toml" <<EOF
networks = ["backend"]
[layers]
out = { path = "$work/net", target = "/out", rw = true }
[run]
command = "/bin/sh"
args = ["-c", "while true; do wget -q -O /tmp/got http://db:8080/ && cp /tmp/got /out/app; sleep 0.2; done"]
EOF
cat > "$manifests/lone.toml" <<EOF
networks = ["elsewhere"]
[layers]
out = { path = "$work/net", target = "/out", rw = true }
[run]
command = "/bin/sh"
args = ["-c", "sleep 1; timeout 3 wget -q -O - http://db:8080/ > /out/lone-by-name 2>&1; echo \$? >> /out/lone-by-name; while true; do sleep 1; done"]
EOF
cat > "$work/peek.toml" <<EOF
networks = ["backend"]
[run]
command = "/bin/sh"
args = ["-c", "timeout 5 wget -q -O - http://10.0.2.2:$metrics_port/metrics; echo wget=\$?; sleep 30"]
EOF
eventually "a container reaches another on its network by name" \
  eval "[ \"\$(cat '$work/net/app' 2>/dev/null)\" = 'hello from the e2e site' ]"
check "a published port of a container on a network serves" body_is "$net_port" "hello from the e2e site"
eventually "a container on another network does not" \
  eval "[ \"\$(tail -1 '$work/net/lone-by-name' 2>/dev/null)\" = 1 ]"
squish network ls > "$work/networks.txt"
check "network ls lists backend, both running" \
  grep -Eq '^backend +10\.89\.[0-9]+\.0/24 +10\.89\.[0-9]+\.1 +2/2 +app, db$' "$work/networks.txt"
check "network ls lists elsewhere" grep -q '^elsewhere ' "$work/networks.txt"
db_ip=$(squish network inspect backend | python3 -c "import json,sys; print(next(m['address'] for m in json.load(sys.stdin)[0]['members'] if m['name']=='db'))")
check "ps --json shows db's address on backend" test "$(ps_field db networks)" = "{'backend': '$db_ip'}"
squish create "$work/peek.toml" >/dev/null 2>"$work/peek.err" || true
eventually "a container on a network cannot reach the daemon's metrics on the host's loopback" \
  eval "squish logs peek | grep -q 'wget=1'"
check "and got none of them" eval "! squish logs peek | grep -q squish_build_info"
squish delete peek >/dev/null
check "metrics: two containers on backend" \
  eval "curl -sf http://127.0.0.1:$metrics_port/metrics > '$work/scrape-net.txt' && grep -q '^squish_network_containers{network=\"backend\"} 2.0' '$work/scrape-net.txt'"

# -- health checks ----------------------------------------------------------------
cat > "$manifests/checked.toml" <<EOF
network = "none"
[layers]
site = { path = "$work/site", target = "/app/site" }
[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/app/site"]
[health]
command = ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
interval = "200ms"
EOF
cat > "$manifests/sick.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
[health]
command = ["/bin/sh", "-c", "echo no database; exit 2"]
interval = "200ms"
retries = 2
EOF
eventually "a passing check: ps says running (healthy)" \
  eval "squish ps | grep -Eq '^[0-9a-f]{7} +checked +[0-9]+ +running \(healthy\) '"
eventually "a failing check: running (unhealthy)" \
  eval "squish ps | grep -Eq ' sick +[0-9]+ +running \(unhealthy\) '"
check "inspect keeps the last checks with their output" \
  eval "squish inspect sick | python3 -c \"import json,sys; h=json.load(sys.stdin)[0]['health_checks']; assert h['status']=='unhealthy' and h['log'][-1]['exit_code']==2 and h['log'][-1]['output']=='no database'\""
check "metrics: the health of each" \
  eval "curl -sf http://127.0.0.1:$metrics_port/metrics > '$work/scrape-health.txt' && grep -q '^squish_container_health{container=\"sick\",status=\"unhealthy\"} 1.0' '$work/scrape-health.txt'"
rm "$manifests/checked.toml" "$manifests/sick.toml"
# The daemon's own checks: an HTTP GET and a TCP connection, no process started.
cat > "$manifests/probed.toml" <<EOF
[layers]
site = { path = "$work/site", target = "/app/site" }
[run]
command = "httpd"
args = ["-f", "-p", "8080", "-h", "/app/site"]
[health]
http = { port = 8080, path = "/" }
interval = "200ms"
EOF
cat > "$manifests/closed.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
[health]
tcp = 5432
interval = "200ms"
retries = 2
EOF
eventually "an http check: running (healthy)" \
  eval "squish ps | grep -Eq ' probed +[0-9]+ +running \(healthy\) '"
check "inspect shows the answer's status line" \
  eval "squish inspect probed | python3 -c \"import json,sys; h=json.load(sys.stdin)[0]['health_checks']; assert h['log'][-1]['output'].startswith('HTTP 200 OK'), h\""
eventually "a tcp check of a port nothing listens on: running (unhealthy)" \
  eval "squish ps | grep -Eq ' closed +[0-9]+ +running \(unhealthy\) '"
check "the event says why, in one line" \
  grep -q 'container.health closed: unhealthy: 127.0.0.1:5432: Connection refused$' "$work/daemon.log"
rm "$manifests/probed.toml" "$manifests/closed.toml"

# -- start order (depends_on) -------------------------------------------------------
cat > "$work/front.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
[depends_on]
store = "healthy"
EOF
check "create of a container whose dependency is missing is accepted, saying what it waits for" \
  eval "squish create '$work/front.toml' 2>&1 >/dev/null | grep -q '^front is waiting for store to be healthy: no squishfile names it; it starts then$'"
check "ps -a says what it waits for and why" \
  eval "squish ps -a | grep -Eq ' front +- +waiting .*waiting for store to be healthy: no squishfile names it'"
cat > "$manifests/store.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
[health]
command = ["test", "-e", "/tmp/ready"]
interval = "200ms"
retries = 1
EOF
eventually "while its dependency is not healthy, it waits, saying so" \
  eval "squish ps -a | grep -q 'waiting for store to be healthy: it is unhealthy'"
check "exec into the dependency" squish exec store touch /tmp/ready
eventually "once it is healthy, the dependent starts" \
  eval "squish ps | grep -Eq ' front +[0-9]+ +running '"
check "the daemon's log has the container.waiting event" \
  grep -q 'container.waiting front: waiting for store to be healthy' "$work/daemon.log"
cat > "$work/store.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
[depends_on]
front = "started"
EOF
check "create that makes a cycle fails, naming it" \
  eval "! squish create '$work/store.toml' 2>'$work/cycle.err' && grep -q 'dependency cycle: store -> front -> store' '$work/cycle.err'"
check "and the running dependency was left as it was" \
  eval "squish ps | grep -Eq ' store +[0-9]+ +running \(healthy\) '"
check "validate names the cycle in each file" \
  eval "! squish validate '$work/store.toml' '$work/front.toml' 2>'$work/validate-cycle.err' && [ \$(grep -c 'dependency cycle' '$work/validate-cycle.err') = 2 ]"
squish delete front >/dev/null
rm "$manifests/store.toml"

# -- the process's user ------------------------------------------------------------
mkdir -p "$work/userdata"
cat > "$manifests/runas.toml" <<EOF
[layers]
data = { path = "$work/userdata", target = "/data", rw = true }
[run]
command = "/bin/sh"
args = ["-c", "id > /data/id; exec sleep 1000"]
user = "1000:1000"
workdir = "/data"
[limits]
nofile = 256
EOF
eventually "a container with run.user runs as that user" \
  eval "grep -q '^uid=1000 gid=1000' '$work/userdata/id'"
check "what it writes to an rw bind is the daemon's user's outside" \
  test "$(stat -c %u "$work/userdata/id")" = "$(id -u)"
check "exec runs as the container's user, in its workdir" \
  eval "[ \"\$(squish exec runas /bin/sh -c 'id -u; pwd')\" = \"\$(printf '1000\n/data')\" ]"
check "its limits hold for its processes and execs" \
  eval "[ \"\$(squish exec runas /bin/sh -c 'ulimit -n')\" = 256 ]"
printf '[run]\ncommand = "sleep"\n[limits]\nmemory = "512M"\n' > "$work/memory.toml"
status_is "validate refuses memory limits" 1 squish validate "$work/memory.toml"
check "saying they are not supported yet, and why" \
  grep -q 'limits.memory: memory limits are not supported yet (they need cgroup v2' "$work/err"
rm "$manifests/runas.toml"

# -- seccomp -------------------------------------------------------------------------
cat > "$manifests/filtered.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
EOF
cat > "$manifests/unfiltered.toml" <<EOF
network = "none"
[run]
command = "sleep"
args = ["1000"]
[security]
seccomp = "unconfined"
EOF
eventually "two containers, one with the default seccomp filter, one unconfined" \
  eval "squish ps | grep -q ' filtered ' && squish ps | grep -q ' unfiltered '"
check "the default filter refuses a user namespace from inside" \
  eval "squish exec filtered sh -c 'unshare -U true 2>&1; echo rc=\$?' | grep -q 'unshare(0x10000000): Operation not permitted'"
check "unconfined, the kernel allows it" squish exec unfiltered unshare -U true
check "the filter is on the container's own processes too" \
  eval "[ \"\$(grep -c '^Seccomp:.2' /proc/\$(ps_field filtered pid)/status)\" = 1 ]"
rm "$manifests/filtered.toml" "$manifests/unfiltered.toml"

# -- named volumes -----------------------------------------------------------------
cat > "$manifests/keeper.toml" <<EOF
network = "none"
[run]
command = "/bin/sh"
args = ["-c", "date +%s%N >> /data/starts; exec sleep 1000"]
[volumes]
kept = "/data"
EOF
eventually "a container with a volume runs" eval "squish ps | grep -q ' keeper '"
check "volume ls lists it with who names it" \
  eval "squish volume ls | grep -Eq '^kept +[0-9]+s +keeper$'"
sed -i 's/sleep 1000/sleep 1001/' "$manifests/keeper.toml"
eventually "its replacement finds what the first one wrote" \
  eval "[ \"\$(squish exec keeper sh -c 'wc -l < /data/starts' 2>/dev/null)\" = 2 ]"
status_is "volume rm is refused while a squishfile names it" 1 squish volume rm kept
check "naming who" grep -q 'volume kept is used by keeper' "$work/err"
check "volume inspect has its size" \
  eval "squish volume inspect kept | python3 -c \"import json,sys; v=json.load(sys.stdin)[0]; assert v['size'] > 0 and v['containers'] == ['keeper']\""
check "volume export writes it as a tar" \
  eval "squish volume export kept '$work/kept.tar' && tar -tf '$work/kept.tar' | grep -qx starts"
status_is "volume import is refused while a running container mounts it" 1 \
  squish volume import kept "$work/kept.tar"
check "saying which" grep -q 'volume kept is mounted by keeper; stop them first' "$work/err"
check "import into another volume from stdin" \
  eval "squish volume import copy - < '$work/kept.tar' 2>/dev/null && squish volume ls | grep -q '^copy '"
rm "$manifests/keeper.toml"
eventually "the container goes with its squishfile" eval "! squish ps -a | grep -q ' keeper '"
check "the volume stays" eval "squish volume ls | grep -q '^kept '"
check "prune removes what no squishfile names" \
  eval "[ \"\$(squish volume prune 2>/dev/null | sort | tr '\n' ' ')\" = 'copy kept ' ]"
check "and it is gone" eval "! squish volume ls | grep -q '^kept '"

# -- secrets -------------------------------------------------------------------------
secret_value="e2e-secret-value-$$-$RANDOM"
cat > "$manifests/vault.toml" <<EOF
network = "none"
[run]
command = "/bin/sh"
args = ["-c", "cat /run/secrets/token > /tmp/seen; exec sleep 1000"]
[secrets]
token = "e2e-token"
EOF
eventually "a container waits for a secret the node does not have, saying so" \
  eval "squish ps -a | grep -q 'waiting for secret e2e-token: the node has no such secret'"
check "secret create from stdin" eval "printf '%s' '$secret_value' | squish secret create e2e-token - >/dev/null"
eventually "then it starts" eval "squish ps | grep -q ' vault '"
check "and reads the value at /run/secrets/token" \
  eval "[ \"\$(squish exec vault cat /tmp/seen)\" = '$secret_value' ]"
check "secret ls names it and who uses it" eval "squish secret ls | grep -Eq '^e2e-token +[0-9]+s +vault$'"
status_is "secret rm is refused while a squishfile names it" 1 squish secret rm e2e-token
first_vault=$(ps_field vault id)
check "a new value replaces the container" eval "echo rotated | squish secret create e2e-token - >/dev/null"
eventually "with the new value" eval "[ \"\$(squish exec vault cat /tmp/seen 2>/dev/null)\" = rotated ]"
check "(a new container)" test "$(ps_field vault id)" != "$first_vault"
{ squish ps -a --json; squish inspect vault; squish secret ls --json; squish events --help; \
  curl -sf "http://127.0.0.1:$metrics_port/metrics"; cat "$work/daemon.log"; } > "$work/everything" 2>&1
check "the value shows nowhere: ps, inspect, secret ls, metrics, the daemon's log" \
  eval "! grep -q '$secret_value' '$work/everything'"
rm "$manifests/vault.toml"
eventually "gone with its squishfile" eval "! squish ps -a | grep -q ' vault '"
check "then secret rm works" squish secret rm e2e-token

# -- kill -9 of the daemon --------------------------------------------------------
before=$(descendants "$daemon_pid" | sort -u)
check "the daemon has container processes" test -n "$before"
kill -9 "$daemon_pid"
wait "$daemon_pid" 2>/dev/null
daemon_pid=""
sleep 1
alive=""
for p in $before; do
  if [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then alive="$alive $p"; fi
done
check "no container process survives kill -9 of the daemon" test -z "$alive"
check "nothing listens on the forwarded port" eval "! http $web_port"
start_daemon
eventually "a new daemon starts everything again" body_is "$web_port" "hello from the e2e site"
check "the stale socket was replaced" test -S "$SQUISH_SOCKET"
rm -f "$work/net/app"
eventually "a new daemon rebuilds the networks" \
  eval "[ \"\$(cat '$work/net/app' 2>/dev/null)\" = 'hello from the e2e site' ]"
rm "$manifests/db.toml" "$manifests/app.toml" "$manifests/lone.toml"
eventually "networks go with their last squishfile" eval "[ -z \"\$(squish network ls | tail -n +2)\" ]"

squish delete web >/dev/null
eventually "delete -> gone" eval "! squish ps -a | grep -q web"
check "nothing listens after delete" eval "! http $web_port"

kill "$daemon_pid"
wait "$daemon_pid"
check "SIGTERM: the daemon exits 0" test $? = 0
daemon_pid=""

summary
