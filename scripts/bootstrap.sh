#!/usr/bin/env bash
# Installs everything idmesh needs on a fresh Debian bookworm machine (run as root).
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

need_pkgs=()
# The Samba AD domain controller the AD tests, the demo and the benchmark run against
# (scripts/samba.sh), and the Kerberos libraries the gssapi build links with.
for p in postgresql-15 postgresql-server-dev-15 postgresql-15-cron libclang-dev pkg-config libssl-dev sudo \
    samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools ldap-utils \
    krb5-user libsasl2-modules-gssapi-mit libkrb5-dev openssl; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  echo "bootstrap: installing cargo-pgrx $PGRX_VERSION (debug build, a few minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --debug
fi

if [ ! -f "$HOME/.pgrx/config.toml" ] || ! grep -q 'pg15' "$HOME/.pgrx/config.toml"; then
  cargo pgrx init --pg15 "$PG_CONFIG"
fi
# pysqlbridge: the TDS (SQL Server wire protocol) server the sqlserver connector's tests use.
if ! python3 -c 'import pysqlbridge' 2>/dev/null; then
  echo "bootstrap: installing pysqlbridge"
  python3 -m pip install -q --disable-pip-version-check pysqlbridge==2.1.3
fi
echo "bootstrap: ok"
