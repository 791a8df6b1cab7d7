#!/usr/bin/env bash
# Runs every example of the examples package: the list is the package's own targets (cargo
# metadata), not a second list kept here. Each runs on SQLite; an example that reads
# DATABASE_URL runs again on PostgreSQL; the bus example runs once per broker. The first run has
# no DATABASE_URL: each example takes its default (SQLite, or the local PostgreSQL server).
#   usage: .ci/examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pg="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
run() { cargo run --quiet -p eventsource-examples --all-features --example "$@"; }

examples="$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for package in json.load(sys.stdin)["packages"]:
    if package["name"] == "eventsource-examples":
        for target in package["targets"]:
            if "example" in target["kind"]:
                print(target["name"], target["src_path"])
')"
[ -n "$examples" ] || { echo "no examples found" >&2; exit 1; }

cargo build --quiet -p eventsource-examples --all-features --examples
while read -r name path; do
  if [ "$name" = event_bus ]; then
    for bus in memory redis rabbitmq nats kafka; do
      echo "--- example $name --bus $bus"
      run "$name" -- --bus "$bus"
    done
    continue
  fi
  echo "--- example $name"
  env -u DATABASE_URL cargo run --quiet -p eventsource-examples --all-features --example "$name"
  if grep -q DATABASE_URL "$path"; then
    echo "--- example $name on PostgreSQL"
    DATABASE_URL="$pg" run "$name"
  fi
done <<< "$examples"
