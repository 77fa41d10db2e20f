#!/usr/bin/env bash
# Builds the fleetmap base image (fleetmap/base:<recipe version>) into the local Docker engine,
# for CI and developers: installs debootstrap when it is missing, then runs
# `fleetmap-base-image ensure` with the host's CA bundle, since this network intercepts TLS to
# PyPI. Idempotent: a no-op (milliseconds) when the engine already has the current recipe's image.
# Needs root and a running Docker engine. The work directory is the one the crate's integration
# test uses, so either reuses what the other built.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  echo "ci-ensure: installing debootstrap" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
fi

ca_bundle="${FLEETMAP_BASE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
args=(ensure --work-dir "${FLEETMAP_BASE_WORK_DIR:-target/tmp/fleetmap-base-image}")
if [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ]; then
  args+=(--ca-bundle "$ca_bundle")
fi

if [ -x target/release/fleetmap-base-image ]; then
  exec target/release/fleetmap-base-image "${args[@]}"
fi
exec cargo run --quiet -p fleetmap-base-image -- "${args[@]}"
