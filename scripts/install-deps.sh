#!/usr/bin/env bash
# Debian packages the testbed needs: debootstrap (local base image, no
# registry), libnetfilter-queue-dev (builds the NetfilterQueue wheel),
# iptables and iproute2 (impairments), tcpdump (packet captures: `capture:`,
# `run --capture`; the netns backend's `exec`/`shell` use the host's tools,
# so iputils-ping too) and tshark (reads the captures with
# tools/wireshark/ttnet.lua; tests/e2e/test_capture.py). Installs only what
# is missing.
set -euo pipefail
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
dpkg -s libnetfilter-queue-dev >/dev/null 2>&1 || need+=(libnetfilter-queue-dev)
dpkg -s python3-dev >/dev/null 2>&1 || need+=(python3-dev)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
        exit 1
    fi
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    # tshark's wireshark-common asks whether non-root users may capture;
    # answer it up front (no), so the install never waits for a terminal.
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
