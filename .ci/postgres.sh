#!/usr/bin/env bash
# A throwaway PostgreSQL server for the search tests (two workers sharing one study).
#
#   .ci/postgres.sh start DIR   install Debian's postgresql if missing, initdb a cluster under DIR,
#                               start it on a free 127.0.0.1 port (trust auth, local only), create
#                               the database; print its URL (postgresql://...) on stdout
#   .ci/postgres.sh stop DIR    stop that server (the cluster files stay in DIR, a temp folder)
#
# PostgreSQL refuses to run as root: when we are root, the server runs as the `postgres` user
# the Debian package creates, and DIR is handed to it.
set -euo pipefail

DATABASE=transferlab_test

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
      dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    else
      echo "postgresql is not installed and cannot be installed here (needs root and apt-get)" >&2
      exit 1
    fi
  fi
  echo "$dir"
}

as_server_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1 bin port
  bin=$(pg_bin)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
  fi
  as_server_user "$bin/initdb" --pgdata="$dir/data" --auth=trust --username=postgres --encoding=UTF8 \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  port=$(free_port)
  # Sockets in DIR (not /var/run/postgresql, which may not exist or belong to a system server).
  as_server_user "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait --timeout=60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
  as_server_user "$bin/createdb" --host=127.0.0.1 --port="$port" --username=postgres "$DATABASE" >&2
  echo "$port" >"$dir/port"
  echo "postgresql://postgres@127.0.0.1:$port/$DATABASE"
}

stop() {
  local dir=$1 bin
  [ -f "$dir/data/postmaster.pid" ] || return 0
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  as_server_user "$bin/pg_ctl" --pgdata="$dir/data" --mode=fast --wait stop >&2 || true
}

case "${1:-}" in
  start) start "${2:?usage: $0 start DIR}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 start DIR | stop DIR" >&2; exit 2 ;;
esac
