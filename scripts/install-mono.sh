#!/usr/bin/env bash
# Install Mono (mcs, mono) and Newtonsoft.Json for the APIM policy tests (tests/policies), which compile
# and run the policies' C# expressions. Does nothing when they are already there; never prompts.
set -euo pipefail

have_newtonsoft() {
    pkg-config --exists newtonsoft-json 2>/dev/null \
        || compgen -G "/usr/lib/cli/Newtonsoft.Json*/Newtonsoft.Json.dll" >/dev/null \
        || compgen -G "/usr/lib/mono/gac/Newtonsoft.Json/*/Newtonsoft.Json.dll" >/dev/null
}

if command -v mcs >/dev/null && command -v mono >/dev/null && have_newtonsoft; then
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-mono.sh: no apt-get here; install Mono (mcs, mono) and Newtonsoft.Json yourself" \
         "(e.g. brew install mono), or point TOKENCOUNTER_NEWTONSOFT_DLL at Newtonsoft.Json.dll." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"  # -n: fail instead of prompting for a password
fi

echo "install-mono.sh: installing mono-mcs, mono-runtime and libnewtonsoft-json-cil-dev" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    mono-mcs mono-runtime libnewtonsoft-json-cil-dev
