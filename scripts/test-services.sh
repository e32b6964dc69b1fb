#!/usr/bin/env bash
# Installs what the browser and PostgreSQL tests need, where it is missing. Safe to re-run.
#
#   * Debian packages `chromium`, `chromium-driver` (browser tests drive /usr/bin/chromium
#     through Playwright; `playwright install` is never run) and `postgresql`.
#   * Starts a PostgreSQL server on loopback if none answers, and creates the role and
#     database the tests use (`rlhfkit` / `rlhfkit`, password `rlhfkit`, on 127.0.0.1:5432).
#     The tests read RLHFKIT_PG_URL if set, else postgresql+psycopg://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test.
#
# Needs root (it is run as root by `make test` on a fresh Debian machine). Without root it
# only reports what is missing; the tests then fail loudly rather than skip.
set -euo pipefail

log() { echo "[test-services] $*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    log "need root for: $*"; return 1; fi
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
  || missing+=(postgresql)

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "chromium, chromium-driver, postgresql already installed"
fi

if [ "${RLHFKIT_NO_PG:-0}" = 1 ]; then
  log "RLHFKIT_NO_PG=1: not starting PostgreSQL (its tests will be skipped, as asked)"
  exit 0
fi

pg_ready() { pg_isready -q -h 127.0.0.1 -p "${PGPORT:-5432}"; }

if ! pg_ready; then
  cluster=$(pg_lsclusters -h 2>/dev/null | awk 'NR==1 {print $1" "$2}')
  if [ -z "$cluster" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    log "creating cluster $ver/main"
    as_root pg_createcluster "$ver" main
    cluster="$ver main"
  fi
  log "starting cluster $cluster"
  # shellcheck disable=SC2086
  as_root pg_ctlcluster $cluster start
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
pg_ready || { log "PostgreSQL did not come up on 127.0.0.1:${PGPORT:-5432}"; exit 1; }

psql_admin() { as_root su postgres -c "psql -v ON_ERROR_STOP=1 -qtA -c \"$1\""; }
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname='rlhfkit'")" != 1 ]; then
  log "creating role rlhfkit"
  psql_admin "CREATE ROLE rlhfkit LOGIN PASSWORD 'rlhfkit' CREATEDB"
fi
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname='rlhfkit_test'")" != 1 ]; then
  log "creating database rlhfkit_test"
  psql_admin "CREATE DATABASE rlhfkit_test OWNER rlhfkit"
fi
log "PostgreSQL ready on 127.0.0.1:${PGPORT:-5432} (database rlhfkit_test)"
