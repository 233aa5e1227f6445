#!/bin/sh
# Best effort: Debian's libjemalloc2 for `dsod train` (src/dsod/launch.py). Without it dsod runs on
# glibc's allocator and says so (about a third more training memory per image, docs/PERFORMANCE.md).
for p in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2; do
  [ -f "$p" ] && exit 0
done
command -v apt-get >/dev/null 2>&1 || { echo "jemalloc not installed (no apt-get): dsod uses glibc's allocator"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "jemalloc not installed (not root): sudo apt-get install libjemalloc2"; exit 0; }
timeout 300 apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 \
  || { timeout 300 apt-get update -qq >/dev/null 2>&1 && timeout 300 apt-get install -y -qq libjemalloc2 >/dev/null 2>&1; } \
  || echo "jemalloc could not be installed: dsod uses glibc's allocator"
exit 0
