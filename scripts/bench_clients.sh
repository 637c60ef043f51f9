#!/bin/bash
# scripts/bench_clients.sh - the POP3 clients of scripts/bench's client rows (after the set-up in
# ../shared/bench/clients/client-run.sh): each downloads every message of one user from the Dovecot that
# scripts/bench started, over implicit TLS with certificate verification, keeps them on the server, and
# delivers them into an empty Maildir with no client-side UIDL state.
#
#   bench_clients.sh prep CLIENT DIR   (root, untimed) a fresh DIR: empty Maildir/{tmp,new,cur}, the client's
#                                      configuration (0600) and password file (0600), owned by $CLIENT_USER
#   bench_clients.sh run CLIENT DIR    (as $CLIENT_USER, timed by the caller) exec the client
#
# CLIENT: pop3 | mpop | fetchmail | getmail | curl (curl: RETR of message 1 to /dev/null, the throughput reference of
# the 1 GiB row; it stores nothing)
# Environment: PORT (Dovecot's pop3s port on 127.0.0.1), CA (PEM trust anchor), MUSER (POP3 user),
# PASSFILE (first line: the password), POP3 (the pop3 binary), CLIENT_USER (unprivileged local user).
# The password never appears on a command line: pop3 reads --password-file, the others their 0600 rc file.
#
# Delivery and durability (checked by scripts/bench with strace, see the notes in BENCHMARKS.md):
#   pop3      built-in Maildir: tmp/, fsync, link into new/, fsync of the directory
#   mpop      built-in Maildir ("delivery maildir")
#   fetchmail no Maildir of its own: MDA safecat (Debian package safecat; tmp/, fsync, link into new/), one
#             sh + safecat process per message
#   getmail   getmail6's Maildir destination (tmp/, fsync, rename into new/)
set -euo pipefail
cmd=$1 C=$2 D=$3
: "${PORT:?} ${CA:?} ${MUSER:?}"

case $cmd in
prep)
  : "${PASSFILE:?} ${CLIENT_USER:?}"
  rm -rf "$D"
  mkdir -p "$D/Maildir/tmp" "$D/Maildir/new" "$D/Maildir/cur" "$D/state" "$D/config"
  PW=$(head -n1 "$PASSFILE")
  install -m 600 /dev/null "$D/pass"
  printf '%s\n' "$PW" > "$D/pass"
  case $C in
    pop3) ;;
    mpop)
      install -m 600 /dev/null "$D/mpoprc"
      cat > "$D/mpoprc" <<EOC
defaults
tls on
tls_starttls off
tls_trust_file $CA
timeout 60
account bench
host 127.0.0.1
port $PORT
user $MUSER
auth user
password $PW
pipelining auto
keep on
only_new on
uidls_file $D/uidls
delivery maildir $D/Maildir
EOC
      ;;
    fetchmail)
      install -m 600 /dev/null "$D/fetchmailrc"
      cat > "$D/fetchmailrc" <<EOC
set no syslog
set no bouncemail
set logfile $D/fetchmail.log
poll localhost via 127.0.0.1 service $PORT protocol POP3 uidl timeout 60:
  user "$MUSER" there with password "$PW" is "$CLIENT_USER" here
  ssl sslcertck sslcertfile "$CA" sslcommonname "localhost"
  keep fetchall
  mda "/usr/bin/safecat $D/Maildir/tmp $D/Maildir/new"
EOC
      ;;
    getmail)
      install -m 600 /dev/null "$D/getmailrc"
      cat > "$D/getmailrc" <<EOC
[retriever]
type = SimplePOP3SSLRetriever
server = 127.0.0.1
port = $PORT
username = $MUSER
password = $PW
ca_certs = $CA
ssl_cert_hostname = localhost

[destination]
type = Maildir
path = $D/Maildir/

[options]
delete = false
read_all = true
verbose = 0
message_log_syslog = false
EOC
      ;;
    curl)
      install -m 600 /dev/null "$D/netrc"
      printf 'machine 127.0.0.1 login %s password %s\n' "$MUSER" "$PW" > "$D/netrc"
      ;;
    *) echo "bench_clients: unknown client $C" >&2; exit 2 ;;
  esac
  chown -R "$CLIENT_USER:" "$D"
  ;;
run)
  export HOME=$D XDG_STATE_HOME=$D/state XDG_CONFIG_HOME=$D/config
  cd "$D"
  case $C in
    pop3)
      : "${POP3:?}"
      exec "$POP3" fetch --keep --ca-file "$CA" --password-file "$D/pass" --maildir "$D/Maildir" \
        "pop3s://$MUSER@127.0.0.1:$PORT" ;;
    mpop) exec mpop -q -C "$D/mpoprc" bench ;;
    fetchmail) exec fetchmail -s -f "$D/fetchmailrc" -i "$D/fetchids" --pidfile "$D/fetchmail.pid" ;;
    getmail) exec getmail --getmaildir "$D" --rcfile "$D/getmailrc" -q ;;
    curl) exec curl -sS --fail --netrc-file "$D/netrc" --cacert "$CA" -o /dev/null -w '%{size_download}\n' \
      "pop3s://127.0.0.1:$PORT/1" ;;
    *) echo "bench_clients: unknown client $C" >&2; exit 2 ;;
  esac
  ;;
*) echo "usage: bench_clients.sh prep|run CLIENT DIR" >&2; exit 2 ;;
esac
