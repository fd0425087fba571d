#!/usr/bin/env bash
# Usage: guest-images/agent/build.sh
#
# Builds ec2lab-guest as a static x86_64 binary (glibc, crt-static) for
# guest images and prints its path on stdout. Cargo's own output goes to
# stderr. --target is what keeps crt-static away from proc macros and
# build scripts, which must stay dynamic. Honours CARGO_TARGET_DIR.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
cd "$(dirname "$0")/../.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static -C strip=symbols' \
  cargo build --release -p ec2lab-guest --target "$target" >&2
out="${CARGO_TARGET_DIR:-$PWD/target}/$target/release/ec2lab-guest"
# A dynamic executable names its loader in a PT_INTERP program header.
if readelf -l "$out" | grep -q 'program interpreter'; then
  echo "build.sh: $out is not statically linked" >&2
  exit 1
fi
echo "$out"
