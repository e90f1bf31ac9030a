#!/bin/sh
# The sida image's entrypoint; it also runs outside Docker (tests/deploy runs it against the checkout).
#
#   no arguments, or options only     ->  sida serve [OPTIONS]
#   a sida subcommand (export, ...)   ->  sida SUBCOMMAND ...        e.g. docker run sida export tensorrt --bundle ...
#   anything else                     ->  run as given               e.g. docker run -it sida bash
#
# Settings: sida itself reads every SIDA_* variable of serve/settings.py (SIDA_BUNDLES='["/bundles/a"]',
# SIDA_BACKEND, SIDA_TRITON_URL, SIDA_HOST, SIDA_PORT, SIDA_MAX_BATCH, SIDA_API_KEYS_FILE, ...). Two more
# become flags of `sida serve` here:
#   SIDA_CONFIG=FILE  ->  --config FILE   (a TOML, YAML or JSON settings file)
#   SIDA_TRITON=1     ->  --triton        (run the backends inside Triton via PyTriton, same container)
#
# `exec` replaces this shell, so sida receives `docker stop`'s SIGTERM itself: uvicorn stops accepting,
# finishes the requests in flight and exits 0.
set -eu

case "${1:-}" in
    '' | -*) set -- sida serve "$@" ;;
    serve | export | train | generate | ui | bench) set -- sida "$@" ;;
esac

if [ "$#" -ge 2 ] && [ "$1" = sida ] && [ "$2" = serve ]; then
    if [ -n "${SIDA_CONFIG:-}" ]; then
        set -- "$@" --config "$SIDA_CONFIG"
    fi
    case "${SIDA_TRITON:-}" in
        1 | true | yes | on) set -- "$@" --triton ;;
        '' | 0 | false | no | off) ;;
        *)
            echo "entrypoint: SIDA_TRITON must be 1 or 0, not '$SIDA_TRITON'" >&2
            exit 2
            ;;
    esac
fi

exec "$@"
