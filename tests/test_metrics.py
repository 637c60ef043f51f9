"""Operations (issue 14): pop3d's Prometheus endpoint and its session logs, checked from outside.

- /metrics is scraped before, during and after real sessions (poplib-level raw client, LMTP, broken TLS); each
  counter must move by exactly the session's work, and no label may carry a user name or an address.
- Only GET /metrics is served; everything else is 404.
- Every session ends with one summary line; with `log.format: json` every line is one JSON object, and no line
  holds a password.
"""
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest

from pop3support import LMTPClient, LOCALHOST, POP3Error, Pop3dDev, client_hello, lmtp_start_transaction, lmtp_stuffed

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(dev):
    """{(name, frozenset(labels)): value} of one GET /metrics."""
    with urllib.request.urlopen(f"http://{LOCALHOST}:{dev.metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out, body


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def wait_for(dev, name, expected, seconds=10, **labels):
    """Scrapes until `name{labels}` reaches `expected` (the session's end is counted just after its last reply)."""
    deadline = time.monotonic() + seconds
    while True:
        samples, _ = scrape(dev)
        if value(samples, name, **labels) >= expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def settled(dev):
    """A scrape once the start-up probes (one connect and close per POP3 port, by wait_port) are counted."""
    wait_for(dev, "pop3d_session_duration_seconds_count", 1, listener="pop3s")
    return wait_for(dev, "pop3d_session_duration_seconds_count", 1, listener="pop3")


def test_port_probes_are_sessions_but_not_tls_failures(pop3d):
    samples = settled(pop3d)
    assert value(samples, "pop3d_sessions_total", listener="pop3s", result="client_closed") == 1
    assert not [k for k in samples if k[0] == "pop3d_tls_handshake_failures_total"], samples


def test_a_session_moves_the_counters_by_exactly_its_work(pop3d):
    dev = pop3d
    before = settled(dev)
    s = dev.session()
    s.login("demo", dev.password)
    during, _ = scrape(dev)
    assert value(during, "pop3d_connections_open", listener="pop3s") == 1
    sizes = dict(s.list())
    s.retr(1)
    s.retr(2)
    s.ok("DELE 3")
    s.quit()
    after = wait_for(dev, "pop3d_sessions_total", value(before, "pop3d_sessions_total", listener="pop3s", result="quit") + 1,
                     listener="pop3s", result="quit")
    assert delta(before, after, "pop3d_sessions_total", listener="pop3s", result="quit") == 1
    assert delta(before, after, "pop3d_logins_total", mechanism="USER", result="success") == 1
    assert delta(before, after, "pop3d_messages_retrieved_total") == 2
    assert delta(before, after, "pop3d_retrieved_octets_total") == sizes[1] + sizes[2]
    assert delta(before, after, "pop3d_messages_deleted_total") == 1
    assert delta(before, after, "pop3d_deleted_octets_total") == sizes[3]
    assert value(after, "pop3d_connections_open", listener="pop3s") == 0
    assert delta(before, after, "pop3d_session_duration_seconds_count", listener="pop3s") == 1
    for operation in ("open", "read", "commit"):
        assert delta(before, after, "pop3d_storage_operation_duration_seconds_count", operation=operation) == \
            (2 if operation == "read" else 1), operation
    assert value(after, "pop3d_build_info", version=[v for (n, l), _ in after.items() if n == "pop3d_build_info"
                                                     for k, v in l if k == "version"][0]) == 1
    expiry = value(after, "pop3d_tls_certificate_expiry_timestamp_seconds")
    assert time.time() + 300 * 86400 < expiry < time.time() + 366 * 86400, expiry  # dev's certificate: 365 days


def test_failures_are_counted_by_their_bounded_reason(pop3d):
    dev = pop3d
    before = settled(dev)
    s = dev.session()
    s.send(b"USER demo\r\n")
    s.line()
    s.send(b"PASS not-the-password\r\n")
    assert s.line().startswith(b"-ERR")
    s.quit()
    # TLS: ALPN without pop3, then a name the certificate does not cover, then a ClientHello cut short by a close.
    for kwargs in ({"alpn": ["imap"]}, {"server_hostname": "other.example"}):
        ctx = ssl.create_default_context(cafile=dev.ca)
        ctx.check_hostname = False
        if "alpn" in kwargs:
            ctx.set_alpn_protocols(kwargs["alpn"])
        with socket.create_connection((LOCALHOST, dev.tls_port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                ctx.wrap_socket(raw, server_hostname=kwargs.get("server_hostname", "localhost")).recv(10)
    with socket.create_connection((LOCALHOST, dev.tls_port), timeout=10) as raw:
        raw.sendall(client_hello()[:60])
    # The failed login above puts 127.0.0.1 under the penalty: the next login waits (and is counted as delayed);
    # a second login while that session holds the maildrop is refused [IN-USE].
    holder = dev.session()
    holder.login("demo", dev.password)
    other = dev.session()
    other.send(b"USER demo\r\n")
    other.line()
    other.send(f"PASS {dev.password}\r\n".encode())
    assert b"[IN-USE]" in other.line()
    other.quit()
    holder.quit()
    after = wait_for(dev, "pop3d_tls_handshake_failures_total", 1, listener="pop3s", reason="sni")
    assert delta(before, after, "pop3d_auth_penalty_delays_total") >= 1
    assert delta(before, after, "pop3d_auth_penalty_delay_seconds_total") >= 1.5
    assert delta(before, after, "pop3d_in_use_refusals_total") == 1
    assert delta(before, after, "pop3d_logins_total", mechanism="USER", result="in_use") == 1
    assert delta(before, after, "pop3d_logins_total", mechanism="USER", result="auth_failed") == 1
    assert delta(before, after, "pop3d_logins_total", mechanism="USER", result="success") == 1
    assert delta(before, after, "pop3d_tls_handshake_failures_total", listener="pop3s", reason="alpn") == 1
    assert delta(before, after, "pop3d_tls_handshake_failures_total", listener="pop3s", reason="sni") == 1
    after = wait_for(dev, "pop3d_sessions_total", 3, listener="pop3s", result="tls_failed")
    assert delta(before, after, "pop3d_sessions_total", listener="pop3s", result="tls_failed") == 3
    assert delta(before, after, "pop3d_sessions_total", listener="pop3s", result="quit") == 3


def test_lmtp_deliveries_and_no_personal_data_in_labels(pop3d):
    dev = pop3d
    before = settled(dev)
    c = LMTPClient((LOCALHOST, dev.lmtp_port))
    replies = lmtp_start_transaction(c, "demo@localhost", "nobody-here@localhost")
    assert replies[0][0] == 250 and replies[1][0] >= 500, replies
    assert c.command("DATA")[0] == 354
    c.send(lmtp_stuffed(b"Subject: counted\r\n\r\nhello\r\n"))
    assert c.reply()[0] == 250
    c.command("QUIT")
    c.close()
    s = dev.session()
    s.login("demo", dev.password)
    s.quit()
    after, body = scrape(dev)
    assert delta(before, after, "pop3d_deliveries_total", via="lmtp", result="delivered") == 1
    assert delta(before, after, "pop3d_storage_operation_duration_seconds_count", operation="deliver") == 1
    label_values = " ".join(v for (_, labels) in after for _, v in labels)
    for personal in ("demo", "localhost", "127.0.0.1", "nobody-here", dev.password):
        assert personal not in label_values, f"{personal!r} in a metric label"
    assert dev.password not in body


def test_only_get_metrics_is_served(pop3d):
    dev = pop3d
    base = f"http://{LOCALHOST}:{dev.metrics_port}"
    for method, path in (("GET", "/"), ("GET", "/metrics/x"), ("POST", "/metrics"), ("PUT", "/metrics"),
                         ("GET", "/../etc/passwd")):
        request = urllib.request.Request(base + path, method=method, data=b"x" if method != "GET" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        assert e.value.code == 404, (method, path, e.value.code)
    # Garbage instead of HTTP: a 400 and a close, the server stays up.
    with socket.create_connection((LOCALHOST, dev.metrics_port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = raw.recv(200)
        assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer
    samples, _ = scrape(dev)
    assert value(samples, "pop3d_build_info", version=next(v for (n, l) in samples if n == "pop3d_build_info"
                                                           for k, v in l)) == 1


def test_metrics_are_off_unless_configured(pop3d):
    """`pop3d serve` with a configuration that does not set metrics.listen opens no such port; check-config
    shows the keys and refuses a misspelt one."""
    dev = pop3d
    r = dev.pop3d("check-config", "--config", dev.config)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert "metrics:\n  listen: null" in out and "format: text" in out, out[-400:]
    with open(dev.config, "a") as f:
        f.write("metrics:\n  lisen: \"127.0.0.1:9\"\n")
    r = dev.pop3d("check-config", "--config", dev.config)
    assert r.returncode == 78 and b"did you mean metrics.listen" in r.stderr, r.stderr


def test_json_logs_one_object_per_line_with_a_summary_per_session(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="log:\n  format: json\n")
    dev.start()
    try:
        s = dev.session()
        s.login("demo", dev.password)
        size = dict(s.list())[1]
        s.retr(1)
        s.quit()
        bad = dev.session(mode="stls")
        bad.send(b"USER demo\r\n")
        bad.line()
        bad.send(b"PASS wrong-password-123\r\n")
        bad.line()
        bad.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(dev.log_lines('"mechanism"')) < 2:
            time.sleep(0.1)
    finally:
        dev.stop()
    objects = []
    for line in dev.log_text().splitlines():
        if line.startswith("{"):
            objects.append(json.loads(line))
    assert objects, dev.log_tail()
    for o in objects:
        assert {"time", "level", "message", "source"} <= o.keys(), o
        assert dev.password not in json.dumps(o) and "wrong-password-123" not in json.dumps(o)
    # The start-up port probes end too (client_closed, no TLS); the two sessions are those that logged in.
    ended = [o for o in objects if o["message"] == "session ended" and "mechanism" in o]
    assert len(ended) == 2, ended
    assert all(o["end"] == "client_closed" for o in objects if o["message"] == "session ended" and "mechanism" not in o)
    good, failed = ended
    assert good["listener"] == "pop3s" and good["end"] == "quit" and good["user"] == "demo", good
    assert good["mechanism"] == "USER" and good["retrieved"] == "1" and good["retrieved-octets"] == str(size), good
    assert good["tls"].startswith("TLSv1.") and good["cipher"] not in ("", "unknown"), good
    assert re.fullmatch(r"127\.0\.0\.1:\d+", good["client"]), good
    assert float(good["duration"]) < 30
    # Every line of the session carries its id.
    session_lines = [o for o in objects if o.get("conn") == good["conn"]]
    assert len(session_lines) >= 3 and {"logged in", "session ended"} <= {o["message"] for o in session_lines}
    assert failed["listener"] == "pop3" and failed["end"] == "client_closed" and "user" not in failed, failed
    assert failed["tls"].startswith("TLSv1."), failed


def test_summary_line_in_text_logs_says_how_sessions_ended(pop3d):
    dev = pop3d
    s = dev.session()
    for _ in range(50):  # limits.bad_commands_before_login is far below 50
        try:
            s.send(b"BOGUS\r\n")
            if not s.line().startswith(b"-ERR"):
                break
        except (POP3Error, OSError):
            break
    else:
        pytest.fail("50 bad commands and the connection is still open")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not dev.log_lines("end=too_many_errors"):
        time.sleep(0.1)
    lines = dev.log_lines("session ended")
    assert any("end=too_many_errors" in line and "listener=pop3s" in line for line in lines), lines
