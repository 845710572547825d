#!/bin/sh
# Installs Debian's Chromium for the browser end-to-end test (tests/test_web_e2e.py).
# Playwright drives this system browser; its own browser download is never used.
set -eu
if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: /usr/bin/chromium"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
