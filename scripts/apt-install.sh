#!/usr/bin/env bash
# Install Debian packages for the test suite: never prompts, fails with a clear line where apt-get is missing.
# Usage: apt-install.sh WHAT PACKAGE... (WHAT names the tests that need them, for the messages)
set -euo pipefail
what=$1
shift

if ! command -v apt-get >/dev/null; then
    echo "apt-install.sh: no apt-get here; install $* yourself for $what" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"  # -n: fail instead of prompting for a password
fi

echo "apt-install.sh: installing $* for $what" >&2
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
