#!/usr/bin/env bash
# Throughput of keel's connectors beside each service's own ceiling, measured in the same
# run against the services `.ci/services` starts: for every sink, `keel run` of N generated
# records (no steps, 1 s checkpoints) into it, then a plain client loop doing the same
# writes (crates/keel-connectors/examples/connector_ceilings.rs); for every source,
# `keel run` reading N records into a files sink, then a plain read loop. Prints records/s
# and keel/ceiling per connector and round.
#
#   bench/connectors/bench.sh [N]        (default 200000; ROUNDS=2; ONLY=postgres, or a regex
#                                         of nats|redis|postgres|s3|delta, runs those alone)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
ROUNDS=${ROUNDS:-2}
cargo build -q --release -p keel-cli
cargo build -q --release -p keel-connectors --example connector_ceilings --features nats,redis,postgres,s3,delta
KEEL=target/release/keel
CEIL=target/release/examples/connector_ceilings
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TAG=bench$$
NATS=${KEEL_NATS_URL:-nats://127.0.0.1:4222}
REDIS=${KEEL_REDIS_URL:-redis://127.0.0.1:6379}
PG=${KEEL_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
S3=${KEEL_S3_ENDPOINT:-http://127.0.0.1:9000}

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):.0f}')"; }

run_keel() { # job file -> records/s
  rm -rf "$WORK/state" "$WORK/out"
  local t0 t1
  t0=$(now)
  "$KEEL" run "$1" --quiet >/dev/null 2>"$WORK/keel.err" || { cat "$WORK/keel.err" >&2; return 1; }
  t1=$(now)
  rate "$N" "$t0" "$t1"
}

ceiling() { # loop target -> records/s
  "$CEIL" "$1" "$2" "$N" | sed 's/.*: \([0-9]*\)\/s$/\1/'
}

generator="[source]
type = \"generator\"
records = $N
partitions = 4
bad_fraction = 0.0"
checkpoint="[checkpoint]
path = \"$WORK/state\"
interval = \"1s\""
files_out="[[sinks]]
name = \"out\"
type = \"files\"
path = \"$WORK/out\""

want() { [[ -z "${ONLY:-}" || "$1" =~ $ONLY ]]; }

printf '%-22s %12s %12s %8s\n' "connector" "keel rec/s" "ceiling" "keel/ceil"
report() { printf '%-22s %12s %12s %8s\n' "$1" "$2" "$3" "$(python3 -c "print(f'{$2/$3:.2f}')")"; }

for round in $(seq 1 "$ROUNDS"); do
  # NATS JetStream: the sink writes N messages, the source reads them back
  if want nats; then
    S="${TAG}_n$round"
    "$CEIL" nats-stream "$S" 0 >/dev/null
    printf 'name = "bench-nats"\n%s\n[[sinks]]\nname = "out"\ntype = "nats"\nurl = "%s"\nsubject = "%s.out"\n%s\n' \
      "$generator" "$NATS" "$S" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling nats-publish "$S.raw"); report "nats sink" "$k" "$c"
    printf 'name = "bench-nats-source"\n[source]\ntype = "nats"\nurl = "%s"\nstream = "%s"\nsubjects = ["%s.out"]\nbounded = true\n%s\n%s\n' \
      "$NATS" "$S" "$S" "$files_out" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling nats-consume "$S"); report "nats source" "$k" "$c"
  fi

  # Redis Streams
  if want redis; then
    K="$TAG:r$round"
    printf 'name = "bench-redis"\n%s\n[[sinks]]\nname = "out"\ntype = "redis_stream"\nurl = "%s"\nstream = "%s:out"\n%s\n' \
      "$generator" "$REDIS" "$K" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling redis-xadd "$K:raw"); report "redis_stream sink" "$k" "$c"
    printf 'name = "bench-redis-source"\n[source]\ntype = "redis_stream"\nurl = "%s"\nstreams = ["%s:out"]\nbounded = true\n%s\n%s\n' \
      "$REDIS" "$K" "$files_out" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling redis-xread "$K:raw"); report "redis_stream source" "$k" "$c"
    redis-cli -u "$REDIS" DEL "$K:out" "$K:raw" >/dev/null 2>&1 || true
  fi

  # PostgreSQL
  if want postgres; then
    T="${TAG}_p$round"
    psql "$PG" -q -c "DROP TABLE IF EXISTS $T; CREATE TABLE $T (id BIGINT, ts BIGINT, customer TEXT, amount BIGINT, currency TEXT)" >/dev/null
    printf 'name = "bench-pg"\n%s\n[[sinks]]\nname = "out"\ntype = "postgres"\nurl = "%s"\ntable = "%s"\n%s\n' \
      "$generator" "$PG" "$T" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling pg-copy "${T}_raw"); report "postgres sink" "$k" "$c"
    psql "$PG" -q -c "DROP TABLE IF EXISTS $T, ${T}_raw" >/dev/null
  fi

  # object storage
  if want s3; then
    printf 'name = "bench-s3"\n%s\n[[sinks]]\nname = "out"\ntype = "s3"\nbucket = "keel-test"\nprefix = "%s/s3-%s"\nendpoint = "%s"\naccess_key = "K"\nsecret_key = "S"\n%s\n' \
      "$generator" "$TAG" "$round" "$S3" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling s3-put "$TAG/raw-$round"); report "s3 sink" "$k" "$c"
  fi

  # Delta Lake on a local path
  if want delta; then
    printf 'name = "bench-delta"\n%s\n[[sinks]]\nname = "out"\ntype = "delta"\ntable = "%s/delta-%s"\n%s\n' \
      "$generator" "$WORK" "$round" "$checkpoint" > "$WORK/job.toml"
    k=$(run_keel "$WORK/job.toml"); c=$(ceiling delta-write "$WORK/delta-raw-$round"); report "delta sink" "$k" "$c"
  fi

done
