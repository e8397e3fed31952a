#!/usr/bin/env bash
# keel as a peer of ../shared/bench: the reference job (job.toml) with the peers' interface.
# usage: run.sh [--resume] [-p N] IN OUT STATE
#   without --resume: wipes OUT and STATE and runs from scratch; with it: resumes from the
#   last checkpoint. -p N is accepted for the common interface; keel runs the job on one
#   worker thread. KEEL_CHECKPOINT_INTERVAL (default 1s, or "off") sets the interval;
#   KEEL_RUN_ARGS adds arguments to `keel run`.
#   Builds target/release/keel first when it is missing or older than the sources.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RESUME=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --resume) RESUME=1; shift ;;
    -p) shift 2 ;;
    *) break ;;
  esac
done
[[ $# -eq 3 ]] || { echo "usage: run.sh [--resume] [-p N] IN OUT STATE" >&2; exit 2; }
IN="$(cd "$1" && pwd)"; OUT="$2"; STATE="$3"
BIN="${KEEL_BIN:-$ROOT/target/release/keel}"
if [[ -z "${KEEL_BIN:-}" ]] && { [[ ! -x "$BIN" ]] || [[ -n "$(find "$ROOT/crates" "$ROOT/Cargo.toml" -newer "$BIN" -print -quit)" ]]; }; then
  (cd "$ROOT" && cargo build --release -q -p keel-cli)
fi
if [[ $RESUME -eq 0 ]]; then rm -rf "$OUT" "$STATE"; fi
mkdir -p "$OUT" "$STATE"
export IN OUT="$(cd "$OUT" && pwd)" STATE="$(cd "$STATE" && pwd)"
rc=0
# KEEL_RUN_ARGS: more arguments for `keel run` (`--metrics-addr 127.0.0.1:0`, say)
# shellcheck disable=SC2086
"$BIN" run "$HERE/job.toml" --quiet ${KEEL_RUN_ARGS:-} || rc=$?
# exit 1 means "finished, with dead letters": a success for the benchmark
[[ $rc -eq 0 || $rc -eq 1 ]] || exit $rc
