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

exec bash "$(dirname "$0")/apt-install.sh" "the policy tests (or point TOKENCOUNTER_NEWTONSOFT_DLL at Newtonsoft.Json.dll)" \
    mono-mcs mono-runtime libnewtonsoft-json-cil-dev
