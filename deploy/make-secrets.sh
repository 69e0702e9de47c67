#!/usr/bin/env sh
# Writes the secret files docker-compose.yml mounts, once; existing files are kept (a new signing
# key would make every stored artifact fail verification: rotate keys as docs/operations.md says).
#
#   deploy/make-secrets.sh            # then: docker compose up -d --build
#
# The files: the artifact signing key, the scorer's gRPC bearer token, Grafana's admin password.
#
# Compose bind-mounts secret files with their own owner and mode. Run as root, the files are
# given to the containers' users (10001 streamloop, 472 grafana) with mode 0400; otherwise they
# are made readable to all local users (0644), which is fine on a single-user machine only.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
umask 077

write() {  # write FILE OWNER_UID CONTENT_COMMAND...
    file="$dir/$1"; owner="$2"; shift 2
    if [ -s "$file" ]; then
        echo "kept    $file"
    else
        "$@" > "$file"
        echo "created $file"
    fi
    if [ "$(id -u)" = 0 ]; then
        chown "$owner:$owner" "$file"
        chmod 0400 "$file"
    else
        chmod 0644 "$file"
    fi
}

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

write artifact-signing.key 10001 random_hex
write scorer-auth-token 10001 random_hex
write grafana-admin-password 472 random_hex
[ "$(id -u)" = 0 ] || echo "note: files are mode 0644 (not root); see docs/operations.md#secrets"
