"""`pop3d doctor` (issue 16) against good and deliberately broken set-ups: a running `pop3d dev`, a certificate for
another name, an expired certificate, port 110 with cleartext logins allowed, and a server that is not running.
The firewall is checked against nftables rules in a network namespace of the test's own (and the judgement
unit-tested on nft and iptables rulesets, DoctorTests); this machine's own firewall is only read."""
import json
import os
import shutil
import subprocess

import pytest

from pop3support import Pop3dDev, make_cert


def doctor(dev, *args):
    r = dev.pop3d("doctor", "--config", dev.config, "--json", *args)
    findings = json.loads(r.stdout.decode())
    return r.returncode, findings


def status(findings, step):
    return [f["status"] for f in findings if f["step"] == step]


def test_a_good_setup_passes_on_loopback(pop3d):
    rc, findings = doctor(pop3d, "--host", "localhost")
    assert rc == 0, [f for f in findings if f["status"] == "FAIL"]
    for step in ("listener 110", "cleartext login", "certificate", "certificate expiry", "certificate name",
                 "reachability", "dns", "passwd-file", "storage", "delivery"):
        assert status(findings, step) and set(status(findings, step)) == {"PASS"}, (step, findings)
    # Every WARN says why, and what to do where something can be done.
    for f in findings:
        assert f["message"], f
        if f["status"] == "WARN" and f["step"] not in ("certificate",):
            assert f.get("fix") or "NAT" in f["message"], f
    # Reachability went through TLS to the real listener.
    (reach,) = [f for f in findings if f["step"] == "reachability" and "127.0.0.1" in f["message"]]
    assert f":{pop3d.tls_port}" in reach["message"] and "POP3 greeting" in reach["message"], reach
    assert not os.listdir(os.path.join(pop3d.data, "state")) or not any(
        n.startswith("doctor-scratch") for n in os.listdir(os.path.join(pop3d.data, "state")))


def test_broken_setups_fail_with_a_fix(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path)
    dev.configure("auth:\n  allow_cleartext: true\n")
    dev.start()
    try:
        # A name the certificate does not cover, and cleartext logins allowed on 110.
        rc, findings = doctor(dev, "--host", "mail.example.org")
        assert rc == 1
        (name,) = [f for f in findings if f["step"] == "certificate name"]
        assert name["status"] == "FAIL" and "mail.example.org" in name["message"] and "certbot" in name["fix"], name
        (clear,) = [f for f in findings if f["step"] == "cleartext login"]
        assert clear["status"] == "FAIL" and "allow_cleartext: false" in clear["fix"], clear
        # An expired certificate.
        tls = os.path.join(dev.data, "tls")
        make_cert(str(tmp_path), days=-2, issued_days_ago=30)
        shutil.copy(tmp_path / "cert.pem", os.path.join(tls, "cert.pem"))
        shutil.copy(tmp_path / "key.pem", os.path.join(tls, "key.pem"))
        rc, findings = doctor(dev, "--host", "localhost")
        assert rc == 1
        (expiry,) = [f for f in findings if f["step"] == "certificate expiry"]
        assert expiry["status"] == "FAIL" and "expired" in expiry["message"] and "renew" in expiry["fix"], expiry
    finally:
        dev.stop()
    # The server stopped: nothing answers on 995's stand-in.
    rc, findings = doctor(dev, "--host", "localhost")
    assert rc == 1
    assert "FAIL" in status(findings, "reachability"), findings


def test_text_output_and_a_configuration_that_does_not_load(pop3d):
    r = pop3d.pop3d("doctor", "--config", pop3d.config)
    out = r.stdout.decode()
    assert r.returncode == 0 and out.splitlines()[0].startswith("PASS  configuration:"), out
    assert out.splitlines()[-1].startswith("summary: "), out
    with open(pop3d.config, "a") as f:
        f.write("limits:\n  idle_timout: 5\n")
    r = pop3d.pop3d("doctor", "--config", pop3d.config)
    assert r.returncode == 1 and r.stdout.decode().startswith("FAIL  configuration:"), r.stdout


@pytest.mark.root
def test_firewall_in_a_network_namespace_of_our_own(pop3d):
    """nftables rules in a fresh network namespace (unshare -n: this machine's own rules are never touched): an input
    chain that drops by default without a rule for the POP3S port FAILs with the nft command that opens it; the same
    chain with that rule PASSes."""
    nft = shutil.which("nft")
    if nft is None:
        pytest.fail("nft is missing (apt-get install nftables, as scripts/test-deps does)")
    port = pop3d.tls_port
    closed = "table inet filter {\n chain input {\n type filter hook input priority 0; policy drop;\n tcp dport 22 accept\n }\n}\n"
    opened = closed.replace("tcp dport 22 accept", f"tcp dport {{ 22, {port} }} accept")
    results = {}
    for name, rules in (("closed", closed), ("opened", opened)):
        path = os.path.join(pop3d.root, f"{name}.nft")
        with open(path, "w") as f:
            f.write(rules)
        script = f"ip link set lo up && {nft} -f {path} && {pop3d.bin} doctor --config {pop3d.config} --json"
        r = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=120)
        findings = json.loads(r.stdout)
        (firewall,) = [f for f in findings if f["step"] == "firewall"]
        results[name] = firewall
    assert results["closed"]["status"] == "FAIL", results
    assert results["closed"]["fix"] == f"nft add rule inet filter input tcp dport {port} accept", results
    assert results["opened"]["status"] == "PASS" and "accepts TCP" in results["opened"]["message"], results


def test_srv_and_mx_records_of_the_domain(pop3d):
    """--domain: the RFC 6186 SRV record must name the host and the POP3S port (else FAIL with what to publish); the
    MX should (else WARN). Asked of a DNS server of the test's own."""
    from pop3support import DNSServer
    good = DNSServer(srv={"_pop3s._tcp.example.test": ("localhost", pop3d.tls_port)}, mx={"example.test": "localhost"})
    wrong = DNSServer(srv={"_pop3s._tcp.example.test": ("other.example.test", 995)})
    try:
        _, findings = doctor(pop3d, "--host", "localhost", "--domain", "example.test", "--dns-server", f"127.0.0.1:{good.port}")
        assert status(findings, "dns srv") == ["PASS"] and status(findings, "dns mx") == ["PASS"], findings
        rc, findings = doctor(pop3d, "--host", "localhost", "--domain", "example.test", "--dns-server", f"127.0.0.1:{wrong.port}")
        (srv,) = [f for f in findings if f["step"] == "dns srv"]
        assert rc == 1 and srv["status"] == "FAIL" and "other.example.test:995" in srv["message"], srv
        assert "pop3d dns-records --host localhost --domain example.test" in srv["fix"], srv
        assert status(findings, "dns mx") == ["WARN"]
    finally:
        good.close()
        wrong.close()
