#!/usr/bin/env bash
# make bench: the same SMTP load against Sluice and Postfix on this machine,
# alternating, with the shared harness in ../shared/bench (Postfix's own
# smtp-source/smtp-sink for throughput, smtpbench for per-message latency).
# Prints one table: ingress and end-to-end msg/s, accept-to-delivery latency
# p50/p90/p99, CPU seconds per 1,000 messages, peak memory of each process,
# and the Sluice/Postfix ratio, median (min-max) of REPS runs.
#
# Environment:
#   REPS=3            repetitions per load and MTA
#   LOADS="4k-c1 4k-c10 4k-c50 100k-c10 5m-c10 4k-c10-sync rate400 ratehalf
#          4k-c1-proc 4k-c10-proc 4k-c50-proc 100k-c10-proc 5m-c10-proc
#          4k-c10-sync-proc rate400-proc ratehalf-proc 4k-c10-lowmem 5m-c10-lowmem"
#                     a load with the suffix -proc runs each Sluice service as
#                     its own process (sluice-local -processes, as production
#                     deploys them) and is compared with the same load's
#                     Postfix runs, so every load is measured both ways;
#                     a load with the suffix -lowmem runs Sluice with
#                     LOWMEM_ENV (default GOMEMLIMIT=320MiB GOGC=100
#                     SLUICE_HUGE_PAGES=off) and is compared with the same
#                     load's Postfix runs: it prints what the default's
#                     memory-for-speed choice (640 MiB soft limit, GOGC=200,
#                     heap on huge pages) buys and costs
#   QUICK=1           smaller N (for a first look; not comparable to the targets)
#   POSTFIX=auto      auto: install (as root, from Debian) and include Postfix; 0: Sluice only
#   OUT=/tmp/sluice-bench/<time>
#   HARNESS=<repo>/../shared/bench
#   SLUICE_FLAGS=     extra sluice-local flags for every Sluice run
# Nothing here runs in `make test`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HARNESS=${HARNESS:-$(cd "$ROOT/.." && pwd)/shared/bench}
[ -x "$HARNESS/relay-e2e.sh" ] || { echo "bench: harness not found at $HARNESS (set HARNESS=)" >&2; exit 1; }
REPS=${REPS:-3}
LOADS=${LOADS:-"4k-c1 4k-c10 4k-c50 100k-c10 5m-c10 4k-c10-sync rate400 ratehalf 4k-c1-proc 4k-c10-proc 4k-c50-proc 100k-c10-proc 5m-c10-proc 4k-c10-sync-proc rate400-proc ratehalf-proc 4k-c10-lowmem 5m-c10-lowmem"}
OUT=${OUT:-/tmp/sluice-bench/$(date +%Y%m%d-%H%M%S)}
POSTFIX=${POSTFIX:-auto}
SLUICE_SMTP=127.0.0.1:2600
POSTFIX_SMTP=127.0.0.1:2525
SINK=127.0.0.1:2626
mkdir -p "$OUT"
# The shared machine is noisy; the harness gates on idleness. Loosen the gate
# a little so a run is not discarded for a stray cron job, keep it strict enough.
export IDLE_MAX_PCT=${IDLE_MAX_PCT:-25} FOREIGN_MAX_PCT=${FOREIGN_MAX_PCT:-5} WAIT_IDLE=${WAIT_IDLE:-120}
export TW_MAX=${TW_MAX:-5000}

log() { printf '%s bench: %s\n' "$(date +%T)" "$*" >&2; }

make -C "$ROOT" build >/dev/null

if [[ $POSTFIX == auto ]]; then
  if ! command -v postfix >/dev/null || ! command -v smtp-source >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
      log "installing Postfix, swaks and sysstat from Debian (once)"
      apt-get update -qq >/dev/null
      echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix swaks sysstat >/dev/null
    fi
  fi
  if command -v postfix >/dev/null && command -v smtp-source >/dev/null; then POSTFIX=1; else
    log "Postfix is not installed and cannot be (not root): Sluice only"; POSTFIX=0
  fi
fi
command -v smtp-source >/dev/null || { echo "bench: smtp-source (Debian package postfix) is required for the load" >&2; exit 1; }

SLUICE_PID=
SLUICE_ENV=()
start_sluice() { # extra sluice-local flags...; SLUICE_ENV: VAR=VALUE for it
  local data=$OUT/sluice-data
  rm -rf "$data"
  env "${SLUICE_ENV[@]}" "$ROOT/bin/sluice-local" -bin "$ROOT/bin" -data "$data" -smtp "$SLUICE_SMTP" -nats 127.0.0.1:4333 \
    -capture 127.0.0.1:2727 -route bench-dst.example=$SINK -jaeger "" ${SLUICE_FLAGS:-} "$@" > "$OUT/sluice-local.log" 2>&1 &
  SLUICE_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/2600) 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: Sluice did not start; see $OUT/sluice-local.log" >&2; exit 1
}
stop_sluice() {
  [[ -n $SLUICE_PID ]] || return 0
  kill -TERM "$SLUICE_PID" 2>/dev/null || true
  wait "$SLUICE_PID" 2>/dev/null || true
  SLUICE_PID=
}
# peak resident memory (VmHWM, MiB) of each Sluice process: sluice-local holds
# the embedded NATS server and, unless the load is a -proc one, the services
sluice_mem() {
  local p name
  for p in $(pgrep -f "$ROOT/bin/sluice-" || true); do
    name=$(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | awk '{print $1}' | xargs -r basename 2>/dev/null) || continue
    [[ -n $name ]] || continue
    awk -v n="$name" '/VmHWM/{printf "%s=%.0f ", n, $2/1024}' /proc/$p/status 2>/dev/null || true
  done
}
postfix_mem() {
  ps -o rss=,comm= -u postfix -u root 2>/dev/null | awk '$2 ~ /^(master|smtpd|smtp|qmgr|cleanup|trivial-rewrite|bounce)$/ {s[$2]+=$1} END {for (k in s) printf "%s=%.0f ", k, s[k]/1024}'
}
start_postfix() {
  "$HARNESS/postfix-setup.sh" 2525 2626 >> "$OUT/harness.log" 2>&1
  postfix start >/dev/null 2>&1 || postfix reload >/dev/null 2>&1 || true
  sleep 1
}
stop_postfix() { postfix stop >/dev/null 2>&1 || true; }

# base load: the load without its -proc or -lowmem suffix (what Postfix runs)
base() { local l=${1%-lowmem}; echo "${l%-proc}"; }
# load -> "N SIZE C RATE SYNC"
params() {
  local q=${QUICK:-0}
  case $(base "$1") in
    4k-c1)       echo "$((q ? 2000 : 20000)) 4096 1 0 0" ;;
    4k-c10)      echo "$((q ? 4000 : 20000)) 4096 10 0 0" ;;
    4k-c50)      echo "$((q ? 4000 : 20000)) 4096 50 0 0" ;;
    100k-c10)    echo "$((q ? 400 : 2000)) 102400 10 0 0" ;;
    5m-c10)      echo "$((q ? 40 : 200)) 5242880 10 0 0" ;;
    4k-c10-sync) echo "$((q ? 4000 : 20000)) 4096 10 0 1" ;;
    rate400)     echo "$((q ? 4000 : 20000)) 4096 10 400 0" ;;
    ratehalf)    echo "$((q ? 4000 : 20000)) 4096 10 half 0" ;;
    *) echo "bench: unknown load $1" >&2; exit 2 ;;
  esac
}

MEMF=$OUT/memory.tsv
printf 'label\trep\tmem\n' > "$MEMF"
SAT=$OUT/saturation.txt
run_one() { # mta load rep
  local mta=$1 load=$2 rep=$3 n size c rate sync label target satkey flags
  read -r n size c rate sync < <(params "$load")
  label=$mta-$load
  # the saturation rate "ratehalf" paces at is each setup's own
  satkey=$mta
  [[ $load == *-proc* ]] && satkey=$mta-proc
  if [[ $mta == sluice ]]; then
    target=$SLUICE_SMTP
    SLUICE_ENV=()
    [[ $load == *-lowmem ]] && read -r -a SLUICE_ENV <<< "${LOWMEM_ENV:-GOMEMLIMIT=320MiB GOGC=100 SLUICE_HUGE_PAGES=off}"
    flags=()
    [[ $sync == 1 ]] && flags+=(-sync-always)
    [[ $load == *-proc* ]] && flags+=(-processes)
    start_sluice "${flags[@]}"
    export MTA_PIDS=$SLUICE_PID PRE_RUN=""
  else
    target=$POSTFIX_SMTP
    start_postfix
    export MTA_PIDS="$(cat /var/spool/postfix/pid/master.pid 2>/dev/null | tr -d ' ')" PRE_RUN="$HARNESS/postfix-hooks.sh pre \$RUN_DIR"
  fi
  if [[ $rate == half ]]; then
    # half of this MTA's own saturation rate, measured by the 4k-c10 load
    rate=$(awk -v m="$satkey" '$1==m {print int($2/2)}' "$SAT" 2>/dev/null | tail -1)
    [[ -n $rate && $rate -gt 0 ]] || rate=200
  fi
  log "$label rep $rep: N=$n size=$size C=$c rate=$rate"
  if [[ $rate == 0 ]]; then
    TARGET=$target SINK=$SINK N=$n SIZE=$size C=$c REPS=1 LABEL=$label OUT=$OUT/e2e "$HARNESS/relay-e2e.sh" >> "$OUT/harness.log" 2>&1 || log "$label: relay-e2e failed (see $OUT/harness.log)"
  fi
  TARGET=$target SINK=$SINK N=$n SIZE=$size C=$c RATE=$rate REPS=1 LABEL=$label OUT=$OUT/lat "$HARNESS/relay-latency.sh" >> "$OUT/harness.log" 2>&1 || log "$label: relay-latency failed (see $OUT/harness.log)"
  if [[ $mta == sluice ]]; then printf '%s\t%s\t%s\n' "$label" "$rep" "$(sluice_mem)" >> "$MEMF"; stop_sluice
  else printf '%s\t%s\t%s\n' "$label" "$rep" "$(postfix_mem)" >> "$MEMF"; stop_postfix; fi
  if [[ $(base "$load") == 4k-c10 && $load != *-lowmem && -s $OUT/e2e/results.tsv ]]; then
    awk -F'\t' -v l="$label" -v m="$satkey" '$1==l {print m, $11}' "$OUT/e2e/results.tsv" | tail -1 >> "$SAT"
  fi
}

trap 'stop_sluice; [[ $POSTFIX == 1 ]] && stop_postfix; true' EXIT
for rep in $(seq "$REPS"); do
  for load in $LOADS; do
    run_one sluice "$load" "$rep"
    # Postfix has no -proc or -lowmem variant: those loads are compared with its plain runs
    [[ $POSTFIX == 1 && $load == "$(base "$load")" ]] && run_one postfix "$load" "$rep"
  done
done
# The host settings that move the figures: on a VM, transparent huge pages
# set to "always" gave Sluice 15-30% more throughput (see the README).
thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
{
  echo "host: $(nproc) CPUs, Linux $(uname -r), transparent_hugepage=${thp:-unknown}"
  python3 "$ROOT/deploy/bench/summarize.py" "$OUT"
} | tee "$OUT/table.txt"
