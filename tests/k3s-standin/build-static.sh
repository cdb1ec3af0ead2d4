#!/bin/sh
# Build the k3s-standin test binary (a stand-in for tests, not K3s) as a
# static-pie x86_64 glibc binary, like firstboot-agent, so it runs in a
# Debian 12 container and in Ubuntu/Rocky VMs. The explicit --target keeps
# +crt-static off build scripts and proc-macros. Cargo's output goes to
# stderr; stdout gets one line: the binary's absolute path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
workspace=$(cd "$here/../.." && pwd)
target=x86_64-unknown-linux-gnu
cd "$workspace"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked -p k3s-standin --target "$target" >&2
target_dir=${CARGO_TARGET_DIR:-$workspace/target}
case $target_dir in
    /*) ;;
    *) target_dir=$workspace/$target_dir ;;
esac
bin=$target_dir/$target/release/k3s-standin
test -x "$bin" || { echo "build-static.sh: $bin was not built" >&2; exit 1; }
echo "$bin"
