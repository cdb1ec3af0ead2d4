#!/usr/bin/env bash
# Benchmark: LXC template build time from a cached base, side by side with
#   floor: recompressing the same base with `zstd -T0` (no rewrite at all), and
#   naive: `tar -x`, copy the files in, `tar -c | zstd -T0`.
# Prints median wall times of N runs (default 3) and the ratios.
# Target: imgbuild within 1.5x of the floor and faster than the naive route.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
runs=${RUNS:-3}
profile=${1:-profiles/worker.yaml}

bash scripts/deps.sh build
agent=$(bash firstboot-agent/build-static.sh)
cargo build --release --quiet -p imgbuild
bin=target/release/imgbuild
work=$(mktemp -d /var/tmp/imgbuild-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cache=${IMGBUILD_CACHE_DIR:-$HOME/.cache/imgbuild}
export SOURCE_DATE_EPOCH=1700000000

# Warm the cache (bootstraps the base once) and find the base blob.
"$bin" build "$profile" --output lxc --agent "$agent" --cache-dir "$cache" --out "$work/warm" >/dev/null
manifest=$(ls "$work"/warm/*.manifest.json)
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"]["sha256"])' "$manifest")
base="$cache/sha256/$digest"
[[ -f $base ]] || { echo "base blob $base not in cache" >&2; exit 1; }
level=3  # the profiles' lxc.zstd-level default

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
decompress() { # the base may be compressed; the floor reads it as stored
  case "$(head -c 4 "$1" | od -An -tx1 | tr -d ' ')" in
    1f8b*) gzip -dc "$1" ;; fd377a58) xz -dc "$1" ;; 28b52ffd) zstd -dc "$1" ;; *) cat "$1" ;;
  esac
}

t_floor=() t_ours=() t_naive=()
for i in $(seq "$runs"); do
  s=$(now); decompress "$base" | zstd -q -T0 -"$level" -o "$work/floor.tar.zst" -f; e=$(now)
  t_floor+=("$(echo "$e - $s" | bc)")

  rm -rf "$work/ours"; s=$(now)
  "$bin" build "$profile" --output lxc --agent "$agent" --cache-dir "$cache" --offline --out "$work/ours" >/dev/null
  e=$(now); t_ours+=("$(echo "$e - $s" | bc)")

  rm -rf "$work/naive"; mkdir -p "$work/naive/root"; s=$(now)
  decompress "$base" | tar -x --numeric-owner --xattrs --xattrs-include='*' -p -C "$work/naive/root"
  install -D -m 0755 "$agent" "$work/naive/root/usr/local/sbin/firstboot-agent"
  install -D -m 0644 firstboot-agent/dist/firstboot-agent.service "$work/naive/root/etc/systemd/system/firstboot-agent.service"
  tar -c --numeric-owner --xattrs --xattrs-include='*' -C "$work/naive/root" . | zstd -q -T0 -"$level" -o "$work/naive/t.tar.zst"
  e=$(now); t_naive+=("$(echo "$e - $s" | bc)")
  rm -rf "$work/naive/root"
done

f=$(printf '%s\n' "${t_floor[@]}" | median)
o=$(printf '%s\n' "${t_ours[@]}" | median)
n=$(printf '%s\n' "${t_naive[@]}" | median)
size=$(stat -c %s "$base")
printf 'base: %s (%d MB), %d runs, median wall time\n' "$(basename "$base")" $((size / 1000000)) "$runs"
printf '  floor  (zstd -T0 recompress)      %7.2f s\n' "$f"
printf '  imgbuild build --offline          %7.2f s\n' "$o"
printf '  naive  (tar -x, cp, tar | zstd)   %7.2f s\n' "$n"
printf 'imgbuild / floor = %.2fx (target <= 1.5x)\n' "$(echo "$o / $f" | bc -l)"
printf 'imgbuild / naive = %.2fx (target < 1.0x)\n' "$(echo "$o / $n" | bc -l)"
