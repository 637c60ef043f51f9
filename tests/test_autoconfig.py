"""Client auto-configuration (issue 16): pop3d's HTTPS autoconfig service answered the way Thunderbird and Outlook
ask, its documents checked against their published formats (Thunderbird's clientConfig 1.1, Microsoft's Autodiscover
POX response schema 2006a), and `pop3d dns-records`."""
import http.client
import ssl
import subprocess
import xml.etree.ElementTree as ET

import pytest

from pop3support import LOCALHOST, Pop3dDev, free_port

AUTODISCOVER_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>
"""
RESPONSE = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


@pytest.fixture(scope="module")
def server(pop3d_bin, tmp_path_factory):
    dev = Pop3dDev(pop3d_bin, tmp_path_factory.mktemp("autoconfig"))
    dev.autoconfig_port = free_port()
    dev.configure(f'autoconfig:\n  listen: "127.0.0.1:{dev.autoconfig_port}"\npolicy:\n  expire_days: 14\n')
    dev.start()
    from pop3support import wait_port
    wait_port(dev.autoconfig_port, dev.proc, 60)
    yield dev
    dev.stop()


def request(dev, method, path, host="localhost", body=None):
    """One HTTPS request as a client makes it: verified against the dev CA, SNI and Host as given."""
    ctx = ssl.create_default_context(cafile=dev.ca)
    ctx.check_hostname = False  # the test connects to 127.0.0.1 but names other hosts in Host:
    conn = http.client.HTTPSConnection(LOCALHOST, dev.autoconfig_port, context=ctx, timeout=30)
    headers = {"Host": host}
    if body is not None:
        headers["Content-Type"] = "text/xml"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("Content-Type"), data


def incoming_servers(xml):
    root = ET.fromstring(xml)
    assert root.tag == "clientConfig" and root.get("version") == "1.1", root.tag
    (provider,) = root.findall("emailProvider")
    return provider, provider.findall("incomingServer")


def test_thunderbird_lookups(server):
    # Thunderbird's first lookup: https://autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=ADDRESS
    status, ctype, xml = request(server, "GET", "/mail/config-v1.1.xml?emailaddress=alice%40example.org",
                                 host="autoconfig.example.org")
    assert status == 200 and ctype.startswith("application/xml"), (status, ctype)
    provider, servers = incoming_servers(xml)
    assert provider.get("id") == "example.org" and provider.findtext("domain") == "example.org"
    (pop,) = servers
    assert pop.get("type") == "pop3"
    assert pop.findtext("hostname") == "localhost"  # the certificate's first DNS name
    assert pop.findtext("port") == str(server.tls_port) and pop.findtext("socketType") == "SSL"
    assert pop.findtext("username") == "%EMAILLOCALPART%"  # the dev accounts are plain names
    assert pop.findtext("authentication") == "password-cleartext"
    assert pop.findtext("pop3/leaveMessagesOnServer") == "true"
    assert pop.findtext("pop3/daysToLeaveMessagesOnServer") == "14"  # the server's EXPIRE
    # The next one: https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml (no address: the Host names it).
    status, _, xml = request(server, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml", host="example.net:443")
    assert status == 200
    provider, _ = incoming_servers(xml)
    assert provider.findtext("domain") == "example.net"


def test_user_name_form_follows_the_accounts(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path)
    dev.autoconfig_port = free_port()
    dev.configure(f'autoconfig:\n  listen: "127.0.0.1:{dev.autoconfig_port}"\n  hostname: pop.example.com\n'
                  'policy:\n  expire_days: 0\n')
    dev.add_user("carol@example.com", "carol-password")
    dev.start()
    try:
        from pop3support import wait_port
        wait_port(dev.autoconfig_port, dev.proc, 60)
        _, _, xml = request(dev, "GET", "/mail/config-v1.1.xml?emailaddress=carol%40example.com")
        _, (pop,) = incoming_servers(xml)
        assert pop.findtext("username") == "%EMAILADDRESS%" and pop.findtext("hostname") == "pop.example.com"
        assert pop.findtext("pop3/leaveMessagesOnServer") == "false"  # EXPIRE 0: retrieved mail goes at QUIT
        assert pop.find("pop3/daysToLeaveMessagesOnServer") is None
        status, _, xml = request(dev, "POST", "/autodiscover/autodiscover.xml",
                                 body=AUTODISCOVER_REQUEST.format(address="carol@example.com"))
        assert status == 200
        assert ET.fromstring(xml).find(f"{RESPONSE}Response/{RESPONSE}Account/{RESPONSE}Protocol/{RESPONSE}LoginName").text \
            == "carol@example.com"
    finally:
        dev.stop()


def test_outlook_autodiscover(server):
    status, ctype, xml = request(server, "POST", "/Autodiscover/Autodiscover.xml", host="autodiscover.example.org",
                                 body=AUTODISCOVER_REQUEST.format(address="demo@example.org"))
    assert status == 200 and ctype.startswith("application/xml"), status
    root = ET.fromstring(xml)
    assert root.tag == "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}Autodiscover"
    account = root.find(f"{RESPONSE}Response/{RESPONSE}Account")
    assert account.findtext(f"{RESPONSE}AccountType") == "email" and account.findtext(f"{RESPONSE}Action") == "settings"
    protocol = account.find(f"{RESPONSE}Protocol")
    values = {child.tag.replace(RESPONSE, ""): child.text for child in protocol}
    assert values == {"Type": "POP3", "Server": "localhost", "Port": str(server.tls_port), "LoginName": "demo",
                      "DomainRequired": "off", "SPA": "off", "SSL": "on", "AuthRequired": "on"}, values


def test_everything_else_is_refused(server):
    assert request(server, "GET", "/")[0] == 404
    assert request(server, "GET", "/autodiscover/autodiscover.xml")[0] == 404  # POST only
    assert request(server, "POST", "/autodiscover/autodiscover.xml", body="<nothing/>")[0] == 400
    assert request(server, "POST", "/autodiscover/autodiscover.xml",
                   body=AUTODISCOVER_REQUEST.format(address="<script>@x"))[0] == 400
    assert request(server, "GET", "/mail/config-v1.1.xml?emailaddress=x", host="bad host/")[0] in (400, 404)
    assert request(server, "POST", "/autodiscover/autodiscover.xml", body="x" * 70_000)[0] == 413
    # TLS only: a plaintext request gets no HTTP answer.
    import socket
    with socket.create_connection((LOCALHOST, server.autoconfig_port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not raw.recv(100).startswith(b"HTTP/")


def test_dns_records(server, pop3d_bin):
    r = subprocess.run([pop3d_bin, "dns-records", "--host", "mail.example.com", "--domain", "example.com"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    records = [line.split("\t") for line in r.stdout.splitlines() if not line.startswith(";")]
    assert ["_pop3s._tcp.example.com.", "3600", "IN", "SRV", "0 1 995 mail.example.com."] in records
    assert ["_pop3._tcp.example.com.", "3600", "IN", "SRV", "0 0 0 ."] in records  # RFC 6186: not offered
    assert ["autoconfig.example.com.", "3600", "IN", "CNAME", "mail.example.com."] in records
    assert ["example.com.", "3600", "IN", "MX", "10 mail.example.com."] in records
    # With the dev configuration: its ports, and POP3 with STLS offered.
    r = subprocess.run([pop3d_bin, "dns-records", "--host", "mail.example.com", "--domain", "example.com",
                        "--config", server.config], capture_output=True, text=True, timeout=60)
    assert f"_pop3s._tcp.example.com.\t3600\tIN\tSRV\t0 1 {server.tls_port} mail.example.com." in r.stdout, r.stdout
    assert f"_pop3._tcp.example.com.\t3600\tIN\tSRV\t10 1 {server.plain_port} mail.example.com." in r.stdout, r.stdout
    r = subprocess.run([pop3d_bin, "dns-records", "--host", "bad name", "--domain", "example.com"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 64
