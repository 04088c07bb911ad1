#!/usr/bin/env bash
# A real Active Directory for the tests, the demo and the benchmark: a Samba AD domain
# controller (realm CORP.LOCAL, host dc1.corp.local) on loopback only, ports 389/636/88.
# Its directory is kept across runs, so a loaded benchmark directory is reused.
#   scripts/samba.sh install | start | stop | status | destroy | env | load-bench N
# `eval "$(scripts/samba.sh env)"` sets the IDMESH_AD_* variables the tests read.
set -euo pipefail
DIR=${IDMESH_SAMBA_DIR:-/var/tmp/idmesh-samba}
CONF=$DIR/etc/smb.conf
BASE=DC=corp,DC=local
# Test passwords of a throwaway test domain, not secrets of anything real.
ADMIN_PW='Idmesh-Admin-1!'
SVC=svc-idmesh
SVC_PW='Idmesh-Svc-1!'
PKGS=(samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools
  ldap-utils krb5-user libsasl2-modules-gssapi-mit libkrb5-dev openssl)

install() {
  local need=() p
  for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ ${#need[@]} -eq 0 ] && return
  echo "samba: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null 2> >(grep -v 'delaying package configuration' >&2)
}

pid() { local p; p=$(tr -dc 0-9 2>/dev/null < "$DIR/samba.pid") && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"; }
answers() {
  ldapsearch -x -H ldap://127.0.0.1 -D Administrator@corp.local -w "$ADMIN_PW" -s base -b '' dnsHostName \
    2>/dev/null | grep -q '^dnsHostName:'
}
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/389) 2>/dev/null; }
# Runs a command with its output in DIR/setup.log, shown only when it fails.
quiet() { "$@" >> "$DIR/setup.log" 2>&1 || { echo "samba: failed: $*" >&2; tail -20 "$DIR/setup.log" >&2; exit 1; }; }

# Samba would generate a certificate for DC1.corp.local only (CN, no subjectAltName), which
# no client can verify on 127.0.0.1: a test CA and a server certificate for dc1.corp.local,
# localhost and 127.0.0.1 instead, in the place Samba reads them from.
tls_cert() {
  local t=$DIR/private/tls
  mkdir -p "$t"
  quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/O=idmesh test/CN=idmesh test CA' \
    -keyout "$t/ca-key.pem" -out "$t/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  quiet openssl req -newkey rsa:2048 -nodes -subj '/O=idmesh test/CN=dc1.corp.local' \
    -keyout "$t/key.pem" -out "$t/cert.csr"
  printf '%s\n' subjectAltName=DNS:dc1.corp.local,DNS:localhost,IP:127.0.0.1 extendedKeyUsage=serverAuth \
    keyUsage=critical,digitalSignature,keyEncipherment basicConstraints=critical,CA:FALSE > "$t/cert.ext"
  quiet openssl x509 -req -in "$t/cert.csr" -CA "$t/ca.pem" -CAkey "$t/ca-key.pem" -days 3650 \
    -extfile "$t/cert.ext" -out "$t/cert.pem"
  rm -f "$t/ca-key.pem" "$t/cert.csr" "$t/cert.ext"
  chmod 600 "$t/key.pem"
}

# Samba's provision into DIR, then a DC serving LDAP and Kerberos only, all state under DIR.
provision() {
  echo "samba: provisioning CORP.LOCAL into $DIR"
  rm -rf "$DIR"; mkdir -p "$DIR"
  quiet samba-tool domain provision --realm=CORP.LOCAL --domain=CORP --server-role=dc --dns-backend=NONE \
    --adminpass="$ADMIN_PW" --targetdir="$DIR" --host-name=dc1 --backend-store=mdb \
    --option="interfaces=lo" --option="bind interfaces only=yes"
  sed -i -E '/^\s*(server services|ldap server require strong auth|ldb:nosync|log file|pid directory|ncalrpc dir|winbindd socket directory|ntp signd socket directory|panic action)\s*=/d' "$CONF"
  sed -i "/^\[global\]/a\\
\tserver services = ldap, kdc\\
\tldap server require strong auth = no\\
\tldb:nosync = true\\
\tlog file = $DIR/samba.log\\
\tpid directory = $DIR\\
\tncalrpc dir = $DIR/ncalrpc\\
\twinbindd socket directory = $DIR/winbindd\\
\tntp signd socket directory = $DIR/ntp_signd" "$CONF"
  tls_cert
  cat > "$DIR/krb5.conf" <<'KRB5'
[libdefaults]
	default_realm = CORP.LOCAL
	dns_lookup_kdc = false
	dns_lookup_realm = false
	# Service principals from the name as given (ldap/dc1.corp.local), never from DNS.
	dns_canonicalize_hostname = false
	rdns = false
[realms]
	CORP.LOCAL = {
		kdc = 127.0.0.1
	}
[domain_realm]
	.corp.local = CORP.LOCAL
	corp.local = CORP.LOCAL
KRB5
  touch "$DIR/provisioned"
}

# Once, with the DC up: the DC's ldap/ principal, and the service account the tests bind as.
setup() {
  echo "samba: creating $SVC, its keytab and the ldap/ service principal"
  quiet samba_spnupdate -s "$CONF"
  # A test domain kept for months: passwords never expire and may change twice a day.
  quiet samba-tool domain passwordsettings set --max-pwd-age=0 --min-pwd-age=0 -s "$CONF"
  samba-tool user show "$SVC" -s "$CONF" >/dev/null 2>&1 ||
    quiet samba-tool user create "$SVC" "$SVC_PW" --description='idmesh service account (tests)' -s "$CONF"
  # Reads and writes users, groups and OUs anywhere in the domain.
  samba-tool group listmembers 'Domain Admins' -s "$CONF" 2>/dev/null | grep -qx "$SVC" ||
    quiet samba-tool group addmembers 'Domain Admins' "$SVC" -s "$CONF"
  rm -f "$DIR/$SVC.keytab"
  quiet samba-tool domain exportkeytab "$DIR/$SVC.keytab" --principal="$SVC@CORP.LOCAL" -s "$CONF"
  touch "$DIR/ready"
}

# The PostgreSQL server (user postgres) reads the CA and the keytab: copies it may read,
# the keytab readable by postgres only.
share_with_postgres() {
  command install -m 644 "$DIR/private/tls/ca.pem" "$DIR/ca.pem"
  if [ -f "$DIR/$SVC.keytab" ] && id postgres >/dev/null 2>&1; then
    command install -m 600 -o postgres -g postgres "$DIR/$SVC.keytab" "$DIR/$SVC.postgres.keytab"
  fi
}

start() {
  install
  [ -f "$DIR/provisioned" ] || provision
  if [ -f "$DIR/ready" ] && answers; then share_with_postgres; echo "samba: running (ldap://127.0.0.1)"; return; fi
  if [ -z "$(pid)" ]; then
    samba -s "$CONF" -D
  fi
  for _ in $(seq 1 120); do
    if answers; then
      [ -f "$DIR/ready" ] || setup
      share_with_postgres
      echo "samba: running (ldap://127.0.0.1, ldaps://127.0.0.1, CA $DIR/ca.pem)"
      return
    fi
    sleep 0.5
  done
  echo "samba: did not answer within 60 s; $DIR/samba.log:" >&2
  tail -30 "$DIR/samba.log" >&2
  exit 1
}

stop() {
  local p
  p=$(pid) || true
  [ -n "$p" ] || return 0
  kill "$p"
  for _ in $(seq 1 100); do
    if ! kill -0 "$p" 2>/dev/null && ! port_busy; then return; fi
    sleep 0.1
  done
  echo "samba: still running after 10 s (pid $p)" >&2
  exit 1
}

# OU=Bench holds exactly the users bench00001..benchN: added offline through Samba's own
# Python SamDB with the DC stopped. One transaction per add is the fastest (measured on
# 10,000 users: 23 s; 1,000 adds per transaction: 73 s, the cost of an add grows with
# the size of its transaction). DIR/bench-N marks a finished load.
load_bench() {
  local n=$1 t0
  [[ $n =~ ^[0-9]+$ ]] || { echo "usage: $0 load-bench N" >&2; exit 2; }
  start >/dev/null
  if [ -f "$DIR/bench-$n" ]; then echo "samba: $n bench users already loaded"; return; fi
  t0=$(date +%s%N)
  stop
  rm -f "$DIR"/bench-*
  /usr/bin/python3 - "$CONF" "$n" <<'PY' || { start >/dev/null; exit 1; }
import sys
import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

conf, n = sys.argv[1], int(sys.argv[2])
lp = LoadParm()
lp.load(conf)
db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
base = str(db.domain_dn())
ou = "OU=Bench," + base
if not db.search(base, scope=ldb.SCOPE_ONELEVEL, expression="(ou=Bench)", attrs=["dn"]):
    db.add({"dn": ou, "objectClass": "organizationalUnit", "description": "idmesh benchmark users"})
have = {str(r.get("sAMAccountName", idx=0)): r.dn
        for r in db.search(ou, scope=ldb.SCOPE_ONELEVEL, attrs=["sAMAccountName"])}
width = max(5, len(str(n)))
want = {"bench%0*d" % (width, i): i for i in range(1, n + 1)}
gone = [dn for name, dn in have.items() if name not in want]
for dn in gone:
    db.delete(dn, ["tree_delete:1"])
depts = ["Engineering", "Sales", "Marketing", "Finance", "Human Resources", "Legal", "Support",
         "Operations", "Research", "Facilities"]
titles = ["Engineer", "Manager", "Analyst", "Specialist", "Consultant", "Director", "Assistant"]
todo = sorted(i for name, i in want.items() if name not in have)
for i in todo:
    num = "%0*d" % (width, i)
    name = "bench" + num
    db.add({
        "dn": "CN=Bench User %s,%s" % (num, ou),
        "objectClass": "user",
        "sAMAccountName": name,
        "userPrincipalName": name + "@corp.local",
        "givenName": "Bench",
        "sn": "User " + num,
        "displayName": "Bench User " + num,
        "mail": name + "@corp.local",
        "title": titles[i % len(titles)],
        "department": depts[i % len(depts)],
        "telephoneNumber": "+1 555 %07d" % i,
        "employeeID": "E" + num,
        "userAccountControl": "514",
    })
print("samba: OU=Bench: %d users removed, %d added" % (len(gone), len(todo)))
PY
  touch "$DIR/bench-$n"
  start >/dev/null
  awk -v d=$(($(date +%s%N) - t0)) -v n="$n" 'BEGIN { printf "samba: %d bench users loaded in %.1f s\n", n, d / 1e9 }'
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) if answers; then echo "samba: running"; else echo "samba: not running"; exit 1; fi ;;
destroy) stop; rm -rf "$DIR" ;;
load-bench) load_bench "${2:-}" ;;
env)
  cat <<ENV
export IDMESH_AD_HOST=127.0.0.1
export IDMESH_AD_FQDN=dc1.corp.local
export IDMESH_AD_BASE='$BASE'
export IDMESH_AD_ADMIN_DN='CN=Administrator,CN=Users,$BASE'
export IDMESH_AD_ADMIN_PASSWORD='$ADMIN_PW'
export IDMESH_AD_SVC_DN='CN=$SVC,CN=Users,$BASE'
export IDMESH_AD_SVC_PASSWORD='$SVC_PW'
export IDMESH_AD_CA='$DIR/ca.pem'
export IDMESH_AD_KEYTAB='$DIR/$SVC.postgres.keytab'
export IDMESH_KRB5_CONFIG='$DIR/krb5.conf'
ENV
  ;;
*) echo "usage: $0 install|start|stop|status|destroy|env|load-bench N" >&2; exit 2 ;;
esac
