#!/bin/sh
# nats stand-in: no arguments or a first argument that is an option runs nats-server with them.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- nats-server "$@"
fi
exec "$@"
