#!/usr/bin/env bash
# Throughput of two commits side by side, interleaved: `meshserve up` on a repository holding only the
# example model `simple`, then `meshserve bench` (gRPC, 16 in flight, 6 s) against it, BASE then HEAD,
# ROUNDS times.  Absolute figures drift on a shared machine: compare the pairs, not the rounds.
#
#   bash bench/ab_commits.sh BASE_COMMIT [ROUNDS]      # e.g. bash bench/ab_commits.sh f08e6a9 3
set -euo pipefail
base_commit=${1:?usage: bench/ab_commits.sh BASE_COMMIT [ROUNDS]}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add -q --detach "$work/base" "$base_commit"
mkdir -p "$work/repo" && cp -r "$root/examples/model_repository/simple" "$work/repo/"

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {  # tree label
  local http grpc pid
  http=$(free_port); grpc=$(free_port)
  (cd "$1" && PYTHONPATH="$1" exec "$python" -m meshserve.cli up --model-repository "$work/repo" \
      --http-port "$http" --grpc-port "$grpc" --metrics-port "$(free_port)" --nats-port "$(free_port)" \
      --batcher-metrics-port "$(free_port)") >"$work/$2.log" 2>&1 &
  pid=$!
  for _ in $(seq 120); do curl -sf "127.0.0.1:$http/v2/models/simple/ready" >/dev/null && break; sleep 0.5; done
  (cd "$1" && PYTHONPATH="$1" "$python" -m meshserve.cli bench -m simple -i grpc -u "127.0.0.1:$grpc" \
      --concurrency-range 16 -p 6000 --no-progress --no-server-stats 2>>"$work/$2.log") | awk -v l="$2" '$1 == 16 {print l, $2}'
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

for _ in $(seq "$rounds"); do
  b=$(run "$work/base" base | awk '{print $2}')
  h=$(run "$root" head | awk '{print $2}')
  echo "base $b req/s  head $h req/s  head/base $(awk -v h="$h" -v b="$b" 'BEGIN {printf "%.2f", h/b}')"
done
