#!/usr/bin/env bash
# What powercut-fs needs from the system, for .ci/run or a developer machine (Debian/Ubuntu).
#
# - Building needs nothing: fuser is used without libfuse (no libfuse3-dev, no pkg-config).
# - Mounting needs /dev/fuse. As root (CI) that is all: the mount is a plain mount(2), and the
#   tool mounts fusectl itself to abort connections at a power cut.
# - As another user, mounting needs the setuid helper fusermount3: Debian package `fuse3`.
#   This script installs it when it is missing (with sudo when not root).
set -euo pipefail

if [ ! -e /dev/fuse ]; then
    echo "powercut-fs: /dev/fuse is missing (modprobe fuse; in a container, pass --device /dev/fuse)" >&2
    exit 1
fi
if command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    # Not needed as root, but harmless and makes non-root use possible on this machine.
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null || echo "powercut-fs: could not install fuse3 (only needed when not root)" >&2
else
    sudo apt-get update -qq && sudo apt-get install -y -qq fuse3
fi
