#!/usr/bin/env bash
# Builds the image context for deploy/Containerfile: DIR/rootfs with the balancer binary at
# /usr/local/bin/balancer and every shared library it needs at its own path.
# Usage: deploy/build-context.sh path/to/balancer DIR
set -euo pipefail
bin=$1
dir=$2
rm -rf "$dir"
mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/run" "$dir/rootfs/tmp"
chmod 1777 "$dir/rootfs/tmp"
cp "$bin" "$dir/rootfs/usr/local/bin/balancer"
# ldd prints "name => /path (addr)" or "/path (addr)"; take every absolute path. A static
# binary (`cargo xtask dist`) has none: ldd says "statically linked", and the image holds the
# binary alone.
ldd "$bin" | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    cp --parents -L "$lib" "$dir/rootfs/"
done
# The built-in worker needs nothing else; account names for --user come from these.
mkdir -p "$dir/rootfs/etc"
printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$dir/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/rootfs/etc/group"
cp "$(dirname "$0")/Containerfile" "$dir/Containerfile"
