#!/usr/bin/env bash
# The clean-root check: what a newcomer gets on a fresh Debian 12. Makes a minimal Debian 12 root with
# mmdebstrap from this machine's apt sources, clones the commit under test into it, and runs the README's
# two commands inside with chroot: the main job (shortened) and the unit tests. Nothing installed on this
# machine by hand can help them. Prints one line with the outcome.
#   scripts/fresh-check.sh [--sources FILE] [--commit REV] [--keep]
# Exit 0: both commands passed; 1: one failed (the log says where); 3: a package download failed (network,
# not a test failure: try again); 2: this machine cannot run the check (needs root, mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

sources=""
commit=HEAD
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --sources) sources=$2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "fresh-check: unknown argument '$1' (expected --sources FILE, --commit REV, --keep)" >&2; exit 2 ;;
  esac
done

outcome() { echo "fresh-check: $1"; }

if [ "$(id -u)" -ne 0 ]; then
  outcome "SKIPPED: needs root (mmdebstrap --mode=root and chroot); run as root or with sudo"
  exit 2
fi
# The host's apt sources, whatever mirror they name (deb822 first, then the one-line format).
if [ -z "$sources" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then sources=$f; break; fi
  done
fi
[ -n "$sources" ] && [ -s "$sources" ] || { outcome "SKIPPED: no apt sources file (pass --sources FILE)"; exit 2; }
for tool in mmdebstrap git; do
  if ! command -v "$tool" >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null ||
      { outcome "NETWORK: could not install $tool on this machine"; exit 3; }
  fi
done
rev=$(git rev-parse --verify "$commit^{commit}") || { outcome "FAILED: no commit '$commit'"; exit 2; }

root=$(mktemp -d "${TMPDIR:-/tmp}/mpx-fresh.XXXXXX")
log=$root.log
mounted=()
cleanup() {
  # Whatever still runs inside the root (an interrupted build) goes first, then the mounts.
  local pid
  for pid in /proc/[0-9]*; do
    if [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ]; then kill -9 "${pid#/proc/}" 2>/dev/null || true; fi
  done
  local still_mounted=0
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
    if mountpoint -q "${mounted[i]}"; then still_mounted=1; fi
  done
  if [ "$keep" -eq 1 ] || [ "$still_mounted" -eq 1 ]; then
    echo "fresh-check: root kept at $root (log $log)"
  else
    rm -rf --one-file-system "$root"  # never into a mount of the host's /dev or /proc
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "fresh-check: making a Debian 12 root in $root from $sources (log: $log)"
if ! mmdebstrap --variant=apt --mode=root --include=ca-certificates bookworm "$root" "$sources" >"$log" 2>&1; then
  tail -5 "$log"
  outcome "NETWORK: mmdebstrap could not fetch the packages of a Debian 12 root (not a test failure; try again)"
  exit 3
fi
git clone --quiet --no-local --no-checkout "$repo" "$root/root/mpx"
git -C "$root/root/mpx" checkout --quiet "$rev"
# The host's way to the network: its resolver, and the local CAs its TLS proxy may need (pip goes through it).
cp /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >>"$log" 2>&1 || true
fi
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$root/$m"
  mounted+=("$root/$m")
done

# Runs one README command inside the root; its exit code: 75 is setup.sh's "a download failed".
inside() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
             /bin/bash -c "cd /root/mpx && $1" >>"$log" 2>&1; }
stage() {
  local what=$1 command=$2 start=$SECONDS rc=0
  echo "fresh-check: $what: $command" | tee -a "$log"
  inside "$command" || rc=$?
  if [ "$rc" -eq 75 ]; then
    tail -5 "$log"
    outcome "NETWORK: a package download failed during '$what' (not a test failure; try again)"
    exit 3
  elif [ "$rc" -ne 0 ]; then
    tail -30 "$log"
    outcome "FAILED: '$command' exited $rc on a fresh Debian 12 (commit ${rev:0:12}; log $log)"
    keep=1
    exit 1
  fi
  echo "fresh-check: $what passed in $((SECONDS - start)) s"
}

stage "main job" "scripts/run.sh --epochs 1 --train-subset 3000 --no-progress --out /root/run"
stage "tests" "scripts/test.sh -L unit"
outcome "PASSED: both README commands work on a fresh Debian 12 root (commit ${rev:0:12})"
