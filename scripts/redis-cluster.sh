#!/usr/bin/env bash
# A Redis Cluster of three masters on loopback, for the tests and benchmarks of the Redis
# store, in a directory of its own (one subdirectory per node: its config file, append-only
# file, log and pid file).
#
#   scripts/redis-cluster.sh start DIR         start three nodes on free ports and join them;
#                                              prints the store URL (also in DIR/url)
#   scripts/redis-cluster.sh stop DIR          stop every node of DIR
#   scripts/redis-cluster.sh kill DIR PORT     kill one node with SIGKILL, as a crash would
#   scripts/redis-cluster.sh restart DIR PORT  start that node again with the same config
#                                              file, and wait until the cluster is whole
#
# Every write is persisted before it is answered (appendonly yes, appendfsync always), so a
# node killed and restarted keeps its buckets; REDIS_CLUSTER_APPENDONLY=no at start turns
# persistence off (for benchmarks: an fsync per write costs more than the round trip). A node is considered failing after 1 s
# (cluster-node-timeout), not the default 15 s, so a restart is seen quickly.
set -euo pipefail

usage() {
  sed -n '5,11p' "$0" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
cmd=$1
dir=$2

# Starts the node of port $1 in $dir/$1 (its config file says whether it already belongs to
# a cluster) and waits until it answers.
node_up() {
  local port=$1 node=$dir/$1
  mkdir -p "$node"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$node" \
    --cluster-enabled yes --cluster-config-file "$node/nodes.conf" \
    --cluster-node-timeout 1000 \
    --appendonly "$(cat "$dir/appendonly")" --appendfsync always --save '' \
    --daemonize yes --pidfile "$node/redis.pid" --logfile "$node/redis.log"
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  cat "$node/redis.log" >&2
  echo "redis-cluster.sh: the node on port $port did not start" >&2
  return 1
}

# Waits until every node of $dir reports cluster_state:ok.
wait_ok() {
  local port
  for _ in $(seq 300); do
    local ok=1
    for port in $(cat "$dir/ports"); do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    [[ $ok == 1 ]] && return 0
    sleep 0.1
  done
  echo "redis-cluster.sh: the cluster in $dir is not ok after 30 s" >&2
  return 1
}

# The pid of the node of port $1, if it runs.
node_pid() {
  local pid
  pid=$(cat "$dir/$1/redis.pid" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Kills the node of port $1 with signal $2 and waits until it is gone.
node_down() {
  local pid
  pid=$(node_pid "$1") || return 0
  kill "-$2" "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/$1/redis.pid"; return 0; }
    sleep 0.05
  done
  echo "redis-cluster.sh: the node on port $1 did not stop" >&2
  return 1
}

case $cmd in
  start)
    mkdir -p "$dir"
    case ${REDIS_CLUSTER_APPENDONLY:-yes} in
      yes | no) echo "${REDIS_CLUSTER_APPENDONLY:-yes}" >"$dir/appendonly" ;;
      *) echo "redis-cluster.sh: REDIS_CLUSTER_APPENDONLY is yes or no" >&2; exit 2 ;;
    esac
    # Three ports P whose cluster bus ports (P + 10000) are free too.
    python3 - >"$dir/ports" <<'EOF'
import random, socket
ports, held = [], []
while len(ports) < 3:
    p = random.randrange(20000, 30000)
    try:
        for q in (p, p + 10000):
            s = socket.socket()
            s.bind(("127.0.0.1", q))
            held.append(s)
        ports.append(p)
    except OSError:
        pass
print(" ".join(map(str, ports)))
EOF
    read -r -a ports <"$dir/ports"
    for port in "${ports[@]}"; do
      node_up "$port"
    done
    redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 \
      --cluster-yes >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; exit 1; }
    wait_ok
    url="redis+cluster://$(printf '127.0.0.1:%s,' "${ports[@]}")"
    echo "${url%,}/" | tee "$dir/url"
    ;;
  stop)
    [[ -f $dir/ports ]] || exit 0
    for port in $(cat "$dir/ports"); do
      node_down "$port" TERM
    done
    ;;
  kill)
    [[ $# -eq 3 ]] || usage
    node_down "$3" KILL
    ;;
  restart)
    [[ $# -eq 3 ]] || usage
    node_up "$3"
    wait_ok
    ;;
  *) usage ;;
esac
