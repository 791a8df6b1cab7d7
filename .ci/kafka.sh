#!/usr/bin/env bash
# Makes sure a Kafka-compatible broker answers on 127.0.0.1:9092 for the Kafka bus tests,
# example and benchmark: `tansu` (a broker written in Rust) with in-memory storage.
# Idempotent: a broker that already answers is left alone. Installs tansu from crates.io only
# when the binary is missing (about 18 minutes on two cores: `--features dynostore` gives the
# in-memory storage engine; the default build has none and refuses to start).
#   usage: .ci/kafka.sh            (KAFKA_PORT to use another port; log in $TMPDIR/tansu.log)
set -euo pipefail
port="${KAFKA_PORT:-9092}"
log="${TMPDIR:-/tmp}/tansu.log"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

if answers; then
  echo "kafka: up on 127.0.0.1:$port"
  exit 0
fi

tansu="$(command -v tansu || true)"
if [ -z "$tansu" ] && [ -x "$HOME/.cargo/bin/tansu" ]; then
  tansu="$HOME/.cargo/bin/tansu"
fi
if [ -z "$tansu" ]; then
  echo "kafka: tansu not found; installing it (cargo install tansu --features dynostore --locked)"
  # Its own target directory, so that the workspace's is neither used nor grown.
  CARGO_TARGET_DIR="${TMPDIR:-/tmp}/eventsource-tansu-target" cargo install tansu --features dynostore --locked --quiet
  rm -rf "${TMPDIR:-/tmp}/eventsource-tansu-target"
  tansu="$HOME/.cargo/bin/tansu"
fi

echo "kafka: starting tansu (in-memory storage) on 127.0.0.1:$port"
nohup "$tansu" broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine "memory://tansu/" >"$log" 2>&1 </dev/null &
for _ in $(seq 1 120); do
  if answers; then
    echo "kafka: up on 127.0.0.1:$port (tansu, pid $!, log $log)"
    exit 0
  fi
  sleep 0.5
done
echo "kafka: tansu did not answer on 127.0.0.1:$port within 60 s; its log:" >&2
tail -n 20 "$log" >&2 || true
exit 1
