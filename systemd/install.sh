#!/usr/bin/env bash
# Installs (or removes) fleetmap's services on a systemd machine.
#
#   install.sh install [--node] [--coordinator] [--bin-dir DIR] [--coordinator-url URL]
#                      [--node-id ID] [--advertise URL] [--runtime process|docker]
#                      [--cluster-token FILE] [--tls-cert FILE --tls-key FILE]
#                      [--tls-ca FILE] [--no-start]
#   install.sh uninstall [--purge]
#
# install: copies fleetmapd / fleetmap-coordinator into /usr/local/bin, creates the `fleetmap`
# system user the coordinator runs as, writes /etc/fleetmap/<service>.toml (never over an
# operator's edited file), puts the fleet's cluster token in /etc/fleetmap/cluster.token (copied
# from --cluster-token FILE, else kept, else generated: then copy it to every other machine and
# pass it there with --cluster-token), with --tls-cert/--tls-key (and --tls-ca) copies the PEM
# certificate chain, its key (mode 0640, group fleetmap, so the coordinator's user can read it)
# and the CA into /etc/fleetmap/tls and turns the tls_* keys on in a newly written settings
# file (an existing one is kept: set them there), installs the units into /etc/systemd/system and enables and starts
# them (unless --no-start). With neither --node nor --coordinator both are installed.
# uninstall: stops and disables the units and removes them and the binaries; --purge also
# removes /etc/fleetmap and the state directories.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
prefix=/usr/local
unit_dir=/etc/systemd/system
conf_dir=/etc/fleetmap
doc_dir="$prefix/share/doc/fleetmap"

die() { echo "install.sh: $*" >&2; exit 1; }

action="${1:-}"
[ -n "$action" ] || die "say install or uninstall (see the top of this file)"
shift

node=0 coordinator=0 start=1 purge=0
bin_dir="$repo/target/release"
coordinator_url="http://127.0.0.1:7077"
node_id="$(hostname)"
advertise=""
runtime="process"
token_source=""
tls_cert="" tls_key="" tls_ca=""
tls_dir="$conf_dir/tls"
while [ $# -gt 0 ]; do
  case "$1" in
    --node) node=1 ;;
    --coordinator) coordinator=1 ;;
    --bin-dir) bin_dir="$2"; shift ;;
    --coordinator-url) coordinator_url="$2"; shift ;;
    --node-id) node_id="$2"; shift ;;
    --advertise) advertise="$2"; shift ;;
    --runtime) runtime="$2"; shift ;;
    --cluster-token) token_source="$2"; shift ;;
    --tls-cert) tls_cert="$2"; shift ;;
    --tls-key) tls_key="$2"; shift ;;
    --tls-ca) tls_ca="$2"; shift ;;
    --no-start) start=0 ;;
    --purge) purge=1 ;;
    *) die "unknown option $1 (see the top of this file)" ;;
  esac
  shift
done
if [ "$node" = 0 ] && [ "$coordinator" = 0 ]; then node=1 coordinator=1; fi
if [ -n "$tls_cert" ] && [ -z "$tls_key" ]; then die "--tls-cert needs --tls-key (the certificate's private key)"; fi
if [ -z "$tls_cert" ] && [ -n "$tls_key" ]; then die "--tls-key needs --tls-cert (the certificate chain it belongs to)"; fi
[ "$(id -u)" = 0 ] || die "run it as root (it writes /usr/local/bin, /etc and systemd units)"

systemd_running() { [ -d /run/systemd/system ]; }

units=()
[ "$coordinator" = 1 ] && units+=(fleetmap-coordinator.service)
[ "$node" = 1 ] && units+=(fleetmapd.service)

install_config() { # name, then sed expressions
  local name="$1"; shift
  local target="$conf_dir/$name"
  if [ -e "$target" ]; then
    echo "install.sh: keeping the existing $target"
    return
  fi
  sed "$@" "$here/$name" > "$target.tmp"
  chmod 0640 "$target.tmp"
  mv "$target.tmp" "$target"
  echo "install.sh: wrote $target"
}

install_token() {
  local target="$conf_dir/cluster.token"
  if [ -n "$token_source" ]; then
    [ -r "$token_source" ] || die "cannot read the cluster token file $token_source"
    install -m 0640 "$token_source" "$target"
    echo "install.sh: installed the cluster token from $token_source"
  elif [ ! -e "$target" ]; then
    (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$target")
    chmod 0640 "$target"
    echo "install.sh: generated the cluster token $target; copy it to every machine of the fleet (install.sh --cluster-token FILE)"
  fi
  if getent group fleetmap >/dev/null; then chgrp fleetmap "$target"; fi
}

# Copies the TLS files given into $tls_dir: the key readable by root and the fleetmap group
# only (the coordinator runs as fleetmap; the daemon as root), like the cluster token.
install_tls() {
  [ -n "$tls_cert$tls_ca" ] || return 0
  install -d -m 0755 "$tls_dir"
  if [ -n "$tls_cert" ]; then
    [ -r "$tls_cert" ] || die "cannot read the TLS certificate $tls_cert"
    [ -r "$tls_key" ] || die "cannot read the TLS key $tls_key"
    install -m 0644 "$tls_cert" "$tls_dir/cert.pem"
    install -m 0640 "$tls_key" "$tls_dir/key.pem"
    if getent group fleetmap >/dev/null; then chgrp fleetmap "$tls_dir/key.pem"; fi
    echo "install.sh: installed the TLS certificate and key in $tls_dir"
  fi
  if [ -n "$tls_ca" ]; then
    [ -r "$tls_ca" ] || die "cannot read the TLS CA file $tls_ca"
    install -m 0644 "$tls_ca" "$tls_dir/ca.pem"
    echo "install.sh: installed the TLS CA in $tls_dir/ca.pem"
  fi
}

# sed expressions turning the tls_* example lines on for the files install_tls put in place.
tls_settings() {
  if [ -n "$tls_cert" ]; then
    printf '%s\n' -e "s|^# tls_cert_file = .*|tls_cert_file = \"$tls_dir/cert.pem\"|" \
      -e "s|^# tls_key_file = .*|tls_key_file = \"$tls_dir/key.pem\"|"
  fi
  if [ -n "$tls_ca" ]; then
    printf '%s\n' -e "s|^# tls_ca_file = .*|tls_ca_file = \"$tls_dir/ca.pem\"|"
  fi
}

do_install() {
  install -d -m 0755 "$prefix/bin" "$conf_dir" "$unit_dir" "$doc_dir"
  install -m 0644 "$repo/README.md" "$doc_dir/README.md"
  if [ "$coordinator" = 1 ]; then
    [ -x "$bin_dir/fleetmap-coordinator" ] || die "$bin_dir/fleetmap-coordinator is missing; build it (cargo build --release) or pass --bin-dir"
    install -m 0755 "$bin_dir/fleetmap-coordinator" "$prefix/bin/fleetmap-coordinator"
    if ! getent passwd fleetmap >/dev/null; then
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fleetmap
      echo "install.sh: created the system user fleetmap"
    fi
    install_token
    install_tls
    local tls_sed=()
    mapfile -t tls_sed < <(tls_settings)
    install_config fleetmap-coordinator.toml -e 's|^db = .*|db = "/var/lib/fleetmap-coordinator/coordinator.db"|' \
      "${tls_sed[@]}"
    chgrp fleetmap "$conf_dir/fleetmap-coordinator.toml"
    install -m 0644 "$here/fleetmap-coordinator.service" "$unit_dir/"
  fi
  if [ "$node" = 1 ]; then
    [ -x "$bin_dir/fleetmapd" ] || die "$bin_dir/fleetmapd is missing; build it (cargo build --release) or pass --bin-dir"
    /usr/bin/python3 -c 'import cloudpickle' 2>/dev/null \
      || die "the workers' /usr/bin/python3 lacks cloudpickle; install it (apt-get install python3-cloudpickle, or pip)"
    install -m 0755 "$bin_dir/fleetmapd" "$prefix/bin/fleetmapd"
    install_token
    install_tls
    local extra=()
    mapfile -t extra < <(tls_settings)
    if [ -n "$advertise" ]; then extra+=(-e "s|^# advertise = .*|advertise = \"$advertise\"|"); fi
    install_config fleetmapd.toml \
      -e "s|@NODE_ID@|$node_id|" \
      -e "s|^coordinator = .*|coordinator = \"$coordinator_url\"|" \
      -e "s|^runtime = .*|runtime = \"$runtime\"|" \
      "${extra[@]}"
    install -m 0644 "$here/fleetmapd.service" "$unit_dir/"
  fi
  if ! systemd_running; then
    echo "install.sh: systemd is not running here; installed ${units[*]} without starting them"
    return
  fi
  systemctl daemon-reload
  if [ "$start" = 1 ]; then
    systemctl enable --now "${units[@]}"
    echo "install.sh: enabled and started ${units[*]}"
  else
    systemctl enable "${units[@]}"
    echo "install.sh: enabled ${units[*]} (not started: --no-start)"
  fi
}

do_uninstall() {
  if systemd_running; then
    systemctl disable --now "${units[@]}" 2>/dev/null || true
  fi
  for unit in "${units[@]}"; do rm -f "$unit_dir/$unit"; done
  if systemd_running; then systemctl daemon-reload; fi
  [ "$coordinator" = 1 ] && rm -f "$prefix/bin/fleetmap-coordinator"
  [ "$node" = 1 ] && rm -f "$prefix/bin/fleetmapd"
  if [ "$purge" = 1 ]; then
    rm -rf "$conf_dir" /var/lib/fleetmapd /var/lib/fleetmap-coordinator "$doc_dir"
    if getent passwd fleetmap >/dev/null; then userdel fleetmap || true; fi
  fi
  echo "install.sh: removed ${units[*]}"
}

case "$action" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) die "unknown action $action: say install or uninstall" ;;
esac
