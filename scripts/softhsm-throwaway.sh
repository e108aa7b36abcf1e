#!/usr/bin/env bash
# Runs a command beside a throwaway SoftHSM2 token, then deletes the token.
#
#   scripts/softhsm-throwaway.sh cargo test --workspace --locked
#   scripts/softhsm-throwaway.sh bash        # a shell with the variables below set
#
# Makes a fresh `mktemp -d` holding a SOFTHSM2_CONF and its token directory, initialises one token
# (`softhsm2-util --init-token --free`) with random user and SO PINs, and runs the command with
#   SOFTHSM2_CONF                      the temporary SoftHSM2 configuration
#   ROBERT_TEST_PKCS11_MODULE          the SoftHSM2 PKCS#11 library
#   ROBERT_TEST_PKCS11_TOKEN_LABEL     the token's label
#   ROBERT_TEST_PKCS11_PIN             the user PIN
#   ROBERT_TEST_PKCS11_SO_PIN          the security officer's PIN
# The directory is deleted on exit whatever the command's outcome (the script exits with the
# command's status). Without softhsm2 (Debian package `softhsm2`) the command still runs, without
# the variables (the PKCS#11 tests then say they were skipped), unless SOFTHSM_THROWAWAY_REQUIRED=1,
# which makes that an error. The library is $SOFTHSM2_MODULE if set, else the first of the usual
# Debian / Fedora paths.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

module="${SOFTHSM2_MODULE:-}"
if [ -z "$module" ]; then
    for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so \
        /usr/lib/*/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
        if [ -f "$m" ]; then module="$m"; break; fi
    done
fi
if [ -z "$module" ] || [ ! -f "$module" ] || ! command -v softhsm2-util >/dev/null 2>&1; then
    if [ "${SOFTHSM_THROWAWAY_REQUIRED:-0}" = 1 ]; then
        echo "softhsm-throwaway: no SoftHSM2 (install the softhsm2 package or set SOFTHSM2_MODULE)" >&2
        exit 1
    fi
    echo "softhsm-throwaway: SoftHSM2 not found; running without a PKCS#11 token" >&2
    exec "$@"
fi

dir="$(mktemp -d -t robert-softhsm.XXXXXX)"
chmod 700 "$dir"
cleanup() {
    local status=$?
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir "$dir/tokens"
cat >"$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$dir/softhsm2.conf"

label="robert-test-$$"
pin="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
so_pin="$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >"$dir/init.log" 2>&1 \
    || { cat "$dir/init.log" >&2; exit 1; }

export ROBERT_TEST_PKCS11_MODULE="$module"
export ROBERT_TEST_PKCS11_TOKEN_LABEL="$label"
export ROBERT_TEST_PKCS11_PIN="$pin"
export ROBERT_TEST_PKCS11_SO_PIN="$so_pin"
echo "softhsm-throwaway: SoftHSM2 token '$label' ($module, in $dir, deleted on exit)" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
