import Foundation
import Logging
import NIOCore
import NIOConcurrencyHelpers
import Testing

@testable import POP3Server

/// Logs, sd_notify and the summary line's formats (issue 14); the metrics themselves are checked end to end in
/// tests/test_metrics.py, by scraping a real server.
@Suite struct OperationsTests {
    @Test func jsonLinesAreOneObjectEachWithEveryMetadataKey() throws {
        let lines = NIOLockedValueBox<[String]>([])
        var handler = JSONLogHandler(label: "pop3d") { line in lines.withLockedValue { $0.append(line) } }
        handler.logLevel = .info
        handler[metadataKey: "conn"] = "7"
        var logger = Logger(label: "pop3d") { _ in handler }
        logger.logLevel = .info
        logger.info("session ended", metadata: ["user": "a\"b\\c\n\u{1}é", "end": "quit"])
        logger.debug("not logged at info")
        let written = lines.withLockedValue { $0 }
        #expect(written.count == 1)
        let line = try #require(written.first)
        #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["message"] == "session ended")
        #expect(object["level"] == "info")
        #expect(object["conn"] == "7")
        #expect(object["end"] == "quit")
        #expect(object["user"] == "a\"b\\c\n\u{1}é")
        #expect(object["time"]?.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil)
    }

    @Test func notifierSendsOneDatagramToThePathAndIgnoresNoSocket() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        let notifier = SystemdNotifier(address: path)
        #expect(notifier.notify("READY=1\nSTATUS=serving"))
        var buffer = [UInt8](repeating: 0, count: 256)
        let received = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
        #expect(received > 0)
        #expect(String(decoding: buffer.prefix(max(received, 0)), as: UTF8.self) == "READY=1\nSTATUS=serving")
        #expect(!SystemdNotifier(address: path + ".absent").notify("READY=1"))
    }

    @Test func summaryFormats() throws {
        #expect(SessionDriver.seconds(.milliseconds(2_007)) == "2.007")
        #expect(SessionDriver.seconds(.milliseconds(40)) == "0.040")
        #expect(SessionDriver.hostAndPort(try .init(ipAddress: "192.0.2.1", port: 50_000)) == "192.0.2.1:50000")
        #expect(SessionDriver.hostAndPort(try .init(ipAddress: "2001:db8::1", port: 995)) == "[2001:db8::1]:995")
        #expect(ServerMetrics.mechanismLabel("scram-sha-256") == "SCRAM-SHA-256")
        #expect(ServerMetrics.mechanismLabel("alice@example.com") == "other")
    }
}

@Suite struct ReloadTests {
    @Test func renderedConfigurationFlattensToKeys() {
        let flat = LiveConfiguration.flatten("listen:\n  pop3s: [\"a:1\"]\nlimits:\n  idle_timeout: 600\nlmtp:\n  domains: []\n  hostname: null\nstate_dir: /s\n")
        #expect(flat == ["listen.pop3s": "[\"a:1\"]", "limits.idle_timeout": "600", "lmtp.domains": "[]", "lmtp.hostname": "null", "state_dir": "/s"])
    }

    @Test func whatAReloadMayChange() {
        for key in ["limits.idle_timeout", "limits.connections", "policy.login_delay", "auth.failure_delay", "trusted_networks",
                    "proxy.trusted_networks", "lmtp.max_recipients", "log.level"] {
            #expect(LiveConfiguration.isReloadable(key), "\(key)")
        }
        for key in ["listen.pop3s", "tls.certificate", "passwd_file", "storage.backend", "limits.index_cache_messages",
                    "limits.shutdown_grace", "lmtp.socket_mode", "lmtp.hostname", "log.format", "metrics.listen", "user"] {
            #expect(!LiveConfiguration.isReloadable(key), "\(key)")
        }
    }

    @Test func applyKeepsWhatNeedsARestart() {
        var old = ServerConfiguration(passwdFile: "/p/users", maildirTemplate: "/m/%u")
        old.limits.connections = 10
        let live = LiveConfiguration(old)
        var new = old
        new.limits.connections = 20
        new.limits.shutdownGracePeriod = .seconds(1)
        new.passwdFile = "/other"
        new.logLevel = "debug"
        let (applied, restart) = live.apply(new)
        #expect(applied == ["limits.connections", "log.level"])
        #expect(restart == ["limits.shutdown_grace", "passwd_file"])
        #expect(live.current.limits.connections == 20)
        #expect(live.current.limits.shutdownGracePeriod == old.limits.shutdownGracePeriod)
        #expect(live.current.passwdFile == "/p/users")
        #expect(live.logLevel.level == .debug)
    }
}

@Suite struct DoctorTests {
    @Test func firewallRulesets() {
        let open = """
            table inet filter {
                chain input {
                    type filter hook input priority filter; policy drop;
                    ct state established,related accept
                    tcp dport { 22, 995 } accept
                }
            }
            """
        #expect(Doctor.judgeFirewall(ruleset: open, port: 995, tool: "nftables").status == .pass)
        let closed = open.replacingOccurrences(of: "{ 22, 995 }", with: "22")
        let finding = Doctor.judgeFirewall(ruleset: closed, port: 995, tool: "nftables")
        #expect(finding.status == .fail)
        #expect(finding.fix == "nft add rule inet filter input tcp dport 995 accept")
        let dropping = "table inet filter {\n chain input {\n type filter hook input priority 0; policy accept;\n tcp dport 995 drop\n }\n}\n"
        #expect(Doctor.judgeFirewall(ruleset: dropping, port: 995, tool: "nftables").status == .fail)
        #expect(Doctor.judgeFirewall(ruleset: "table inet filter {\n}\n", port: 995, tool: "nftables").status == .pass)
        let iptables = "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp -m tcp --dport 995 -j ACCEPT\nCOMMIT\n"
        #expect(Doctor.judgeFirewall(ruleset: iptables, port: 995, tool: "iptables").status == .pass)
        #expect(Doctor.judgeFirewall(ruleset: iptables.replacingOccurrences(of: "995", with: "993"), port: 995, tool: "iptables").status == .fail)
        #expect(Doctor.judgeFirewall(ruleset: "tcp dport 1995 accept\nchain input { type filter hook input priority 0; policy drop; }", port: 995, tool: "nftables").status == .fail)
    }
}
