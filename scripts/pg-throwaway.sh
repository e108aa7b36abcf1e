#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL cluster, then stops and deletes the cluster.
#
#   scripts/pg-throwaway.sh cargo test --workspace --locked
#   scripts/pg-throwaway.sh bash          # a shell with ROBERT_TEST_POSTGRES_URL set
#
# The cluster: `initdb` into a fresh `mktemp -d` (as the `postgres` user when run as root, since
# initdb refuses root), listening on 127.0.0.1 on a free port with its unix socket in the same temp
# dir, trust authentication for loopback only, superuser and database `robert`. The command runs with
#   ROBERT_TEST_POSTGRES_URL=postgres://robert@127.0.0.1:PORT/robert
# and the cluster is stopped and its directory deleted on exit, whatever the command's outcome
# (the script exits with the command's status).
#
# Server binaries: $PG_BIN, else the newest /usr/lib/postgresql/*/bin. If there are none, the
# command still runs, without the URL (the PostgreSQL tests then say they were skipped), unless
# PG_THROWAWAY_REQUIRED=1, which makes that an error.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi

pg_bin="${PG_BIN:-}"
if [ -z "$pg_bin" ]; then
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do pg_bin="$d"; done
fi
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    if [ "${PG_THROWAWAY_REQUIRED:-0}" = 1 ]; then
        echo "pg-throwaway: no PostgreSQL server binaries (set PG_BIN or install postgresql)" >&2
        exit 1
    fi
    echo "pg-throwaway: no PostgreSQL server binaries found; running without ROBERT_TEST_POSTGRES_URL" >&2
    exec "$@"
fi

as_owner=()
if [ "$(id -u)" = 0 ]; then
    owner="${PG_THROWAWAY_USER:-postgres}"
    if ! id "$owner" >/dev/null 2>&1; then
        echo "pg-throwaway: running as root, and user '$owner' (for initdb) does not exist" >&2
        exit 1
    fi
    as_owner=(runuser -u "$owner" --)
fi

dir="$(mktemp -d -t robert-pg.XXXXXX)"
chmod 700 "$dir"
if [ "${#as_owner[@]}" -gt 0 ]; then chown "$owner" "$dir"; fi

cleanup() {
    local status=$?
    if [ -f "$dir/data/postmaster.pid" ]; then
        "${as_owner[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || "${as_owner[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${as_owner[@]}" "$pg_bin/initdb" -D "$dir/data" -U robert --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

started=
for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$(( 20000 + RANDOM % 40000 ))
    port_free "$port" || continue
    if "${as_owner[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=200" \
        start >/dev/null 2>&1; then
        started=1
        break
    fi
done
if [ -z "$started" ]; then
    echo "pg-throwaway: the cluster did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
fi
"${as_owner[@]}" "$pg_bin/createdb" -h "$dir" -p "$port" -U robert robert

export ROBERT_TEST_POSTGRES_URL="postgres://robert@127.0.0.1:$port/robert"
echo "pg-throwaway: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir, deleted on exit)" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
