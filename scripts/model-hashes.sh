#!/usr/bin/env bash
# The "same numbers" guard: SHA-256 of model.safetensors after `mpx train --max-steps 200` (seed 0, two
# threads) for the four CPU presets, keyed by this machine. oneDNN picks its kernels by instruction set and
# cache sizes, so the bytes are only comparable on the same kind of CPU: each machine kind has its own entry.
#
#   scripts/model-hashes.sh check  MPX HASHES   compare with the entry for this machine (exit 77: none)
#   scripts/model-hashes.sh record MPX HASHES   write this machine's entry (with the binary before a change)
#   scripts/model-hashes.sh key                 print this machine's key
set -euo pipefail
presets=(32-true bf16-mixed 16-mixed bf16-true)

machine_key() {
  local model features l1 l2
  model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//; s/ *$//')
  features=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
             grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|avx512_fp16|amx_bf16|amx_tile)$' |
             sort | tr '\n' '+' | sed 's/+$//')
  l1=$(cat /sys/devices/system/cpu/cpu0/cache/index0/size 2>/dev/null || echo '?')
  l2=$(cat /sys/devices/system/cpu/cpu0/cache/index2/size 2>/dev/null || echo '?')
  echo "${model}|${features}|L1d=${l1}|L2=${l2}"
}

hashes() {  # MPX -> "PRESET SHA" lines
  local mpx=$1 work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  for p in "${presets[@]}"; do
    if ! "$mpx" train --precision "$p" --max-steps 200 --seed 0 --threads 2 --no-progress \
         --out "$work/$p" >"$work/$p.log" 2>&1; then
      echo "mpx train --precision $p failed:" >&2
      tail -5 "$work/$p.log" >&2
      return 1
    fi
    echo "$p $(sha256sum "$work/$p/model.safetensors" | cut -c1-64)"
  done
}

case "${1:-}" in
  key) machine_key ;;
  record)
    mpx=$2 file=$3 key=$(machine_key)
    new=$(hashes "$mpx")
    touch "$file"
    { grep -vF "$key	" "$file" || true
      while read -r p h; do printf '%s\t%s\t%s\n' "$key" "$p" "$h"; done <<<"$new"; } >"$file.tmp"
    mv "$file.tmp" "$file"
    echo "recorded for $key:"; echo "$new" ;;
  check)
    mpx=$2 file=$3 key=$(machine_key)
    if [[ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz &&
          ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]]; then
      echo "no Fashion-MNIST in /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"
      exit 77
    fi
    if ! grep -qF "$key	" "$file"; then
      echo "no recorded model hashes for this machine ($key) in $file;"
      echo "record them with the binary of the commit before a change: scripts/model-hashes.sh record MPX $file"
      exit 77
    fi
    failed=0
    while read -r p h; do
      # (|| true: under pipefail a preset with no entry would otherwise end the script without a word)
      want=$(grep -F "$key	$p	" "$file" | cut -f3 || true)
      # A preset whose numbers changed on purpose loses its entries for the machines nobody could re-record.
      if [[ -z "$want" ]]; then echo "$p: no recorded hash for this machine: not compared ($h)"
      elif [[ "$h" == "$want" ]]; then echo "$p: same bytes ($h)"
      else echo "$p: model.safetensors changed: $h, recorded $want"; failed=1; fi
    done < <(hashes "$mpx")
    exit $failed ;;
  *) sed -n 2,8p "$0" >&2; exit 2 ;;
esac
