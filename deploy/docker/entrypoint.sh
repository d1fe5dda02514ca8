#!/bin/sh
# The container's entry point: initialise the data directory on the first start
# (a new CA, TLS certificate for localhost and $ESTKIT_HOSTNAME), then serve it.
# Extra arguments go to `estkit serve` (e.g. --workers 4).
set -eu
: "${ESTKIT_DIR:=/var/lib/estkit}"
: "${ESTKIT_LISTEN:=0.0.0.0:8443}"
if [ ! -f "$ESTKIT_DIR/config.toml" ]; then
    set -- --dir "$ESTKIT_DIR" --listen "$ESTKIT_LISTEN"
    if [ -n "${ESTKIT_HOSTNAME:-}" ]; then
        set -- "$@" --hostname "$ESTKIT_HOSTNAME"
    fi
    estkit init "$@"
    echo "estkit: initialised $ESTKIT_DIR; clients trust $ESTKIT_DIR/ca.pem" >&2
    set --
fi
exec estkit serve --dir "$ESTKIT_DIR" --listen "$ESTKIT_LISTEN" "$@"
