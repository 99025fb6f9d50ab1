#!/usr/bin/env bash
# make test-compose: runs the compose deployment for real and tears it down.
#
# Builds the local images (make images: FROM scratch, no registry needed),
# starts compose.yaml with compose.local.yaml (local NATS image, no Jaeger,
# Prometheus or Grafana, which cannot be pulled) under a project name of its
# own with every published port on 127.0.0.1 and picked by Docker, runs
# TestCompose against it, and removes the project's containers, network
# and volumes on the way out, also on failure or interrupt. Skipped, with a
# message, where no Docker engine answers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
	echo "test-compose: SKIP: no Docker engine answers (docker info failed); nothing was run"
	exit 0
fi
# A fresh machine with a Docker engine may lack Compose: Debian packages it.
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 &&
	[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
if command -v docker-compose >/dev/null 2>&1; then
	compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
else
	echo "test-compose: FAIL: Docker answers but neither docker-compose nor docker compose is installed"
	exit 1
fi

start=$(date +%s)
make -C "$root" --no-print-directory images

project="sluicetest$(date +%s)$$"
export SLUICE_COMPOSE_PROJECT="$project" SLUICE_COMPOSE_COMMAND="${compose[*]}"
export SLUICE_SMTP_PUBLISH=127.0.0.1:0 SLUICE_SUBMISSION_PUBLISH=127.0.0.1:0 \
	SLUICE_SUBMISSIONS_PUBLISH=127.0.0.1:0 SLUICE_NATS_PUBLISH=127.0.0.1:0 \
	SLUICE_CAPTURE_PUBLISH=127.0.0.1:0
dc() { (cd "$here" && "${compose[@]}" -p "$project" -f compose.yaml -f compose.local.yaml "$@"); }

status=1
cleanup() {
	if [ "$status" -ne 0 ]; then
		echo "test-compose: failed; the last lines of every container's log:"
		dc logs --no-color --tail 40 || true
	fi
	dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || dc down -v --remove-orphans -t 5 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The services TestCompose expects, with what they depend on (setup).
dc up -d setup nats-1 nats-2 nats-3 ingress scheduler deliverer-1 deliverer-2 bouncer capture
(cd "$root/deploy" && go test -count=1 -timeout 8m -run '^TestCompose$' -v ./compose)
status=0
echo "test-compose: passed in $(( $(date +%s) - start )) s"
