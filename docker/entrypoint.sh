#!/bin/sh
# Container entrypoint: wait for PostgreSQL (when that is the database), migrate, run the command.
#
#   DATABASE_URL         as for the app (LEMOE_DATABASE_URL also read); PostgreSQL URLs are waited
#                        for, SQLite or unset (SQLite under LEMOE_DATA_DIR) is not
#   LEMOE_DB_WAIT_S      seconds to wait for PostgreSQL before giving up (default 60)
#   LEMOE_SKIP_MIGRATE   1 / true / yes: do not run `lemoe migrate` (e.g. a separate migrate job
#                        already did)
set -eu

log() {
    printf 'lemoe-entrypoint: %s\n' "$*" >&2
}

if [ "$#" -eq 0 ]; then
    log "no command given (the image's default is: lemoe serve --host 0.0.0.0 --port 8000)"
    exit 64
fi

here=$(cd "$(dirname "$0")" && pwd)
db_url=${DATABASE_URL:-${LEMOE_DATABASE_URL:-}}

case $db_url in
    postgres*://*)
        # Bounded by LEMOE_DB_WAIT_S; the helper prints why it gave up and exits non-zero.
        python "$here/wait_for_db.py"
        ;;
    *)
        # SQLite (or no URL: SQLite in the data dir) is a local file; nothing to wait for.
        ;;
esac

case ${LEMOE_SKIP_MIGRATE:-} in
    1 | true | TRUE | True | yes | YES)
        log "LEMOE_SKIP_MIGRATE=${LEMOE_SKIP_MIGRATE}: not running migrations"
        ;;
    *)
        log "running: lemoe migrate"
        lemoe migrate || {
            status=$?
            log "lemoe migrate failed (exit $status); not starting: $*"
            exit "$status"
        }
        ;;
esac

exec "$@"
