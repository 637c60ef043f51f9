import Crypto
import Foundation
import MailStore
import NIOCore
import POP3Client
import SystemIO

/// `pop3d doctor`: one line per step of a mail admin's set-up list (listeners, certificate, reachability, firewall,
/// DNS, privileges, storage), each PASS, WARN or FAIL with the command that fixes it. Reads and probes only; the one
/// thing it writes is a scratch message in a scratch Maildir under `state_dir`, removed again.
public struct Doctor: Sendable {
    public enum Status: String, Codable, Sendable { case pass = "PASS", warn = "WARN", fail = "FAIL" }

    public struct Finding: Codable, Sendable, Equatable {
        public var step: String
        public var status: Status
        public var message: String
        public var fix: String?
    }

    public let configuration: ServerConfiguration
    public let configurationFile: String
    /// The name clients use (`--host`): the certificate must cover it, DNS should point here.
    public let host: String?
    /// The mail domain (`--domain`): its `_pop3s._tcp` SRV and MX records should name `host`.
    public let domain: String?
    /// The DNS server asked for those (`--dns-server HOST:PORT`; default /etc/resolv.conf's).
    public let dnsServer: String?

    public init(configuration: ServerConfiguration, configurationFile: String, host: String?, domain: String? = nil, dnsServer: String? = nil) {
        self.configuration = configuration
        self.configurationFile = configurationFile
        self.host = host
        self.domain = domain
        self.dnsServer = dnsServer
    }

    public func run() async -> [Finding] {
        var out: [Finding] = []
        out += self.listeners()
        let (certificate, pin) = self.certificate()
        out += certificate
        out += await self.reachability(pin: pin)
        out += self.firewall()
        out += self.dns()
        out += self.privileges()
        out += self.storage()
        return out
    }

    // MARK: listeners

    func listeners() -> [Finding] {
        var out: [Finding] = []
        let c = self.configuration
        if c.pop3sListeners.isEmpty {
            out.append(.init(step: "listener 995", status: .fail, message: "no implicit-TLS listener (RFC 8314 wants POP3S on 995)",
                             fix: "add listen: {pop3s: \"0.0.0.0:995\"} to \(self.configurationFile)"))
        } else if !c.pop3sListeners.contains(where: { $0.port == 995 }) {
            out.append(.init(step: "listener 995", status: .warn, message: "POP3S listens on \(c.pop3sListeners.map(\.description).joined(separator: ", ")), not on 995: clients must be told the port",
                             fix: "listen: {pop3s: \"0.0.0.0:995\"}"))
        } else {
            out.append(.init(step: "listener 995", status: .pass, message: "POP3S on \(c.pop3sListeners.map(\.description).joined(separator: ", "))", fix: nil))
        }
        if c.pop3Listeners.isEmpty {
            out.append(.init(step: "listener 110", status: .pass, message: "no plaintext listener", fix: nil))
        } else if !c.tlsConfigured {
            out.append(.init(step: "listener 110", status: .fail, message: "port 110 without a certificate: STLS cannot be offered", fix: "set tls.certificate and tls.key, or remove listen.pop3"))
        } else {
            out.append(.init(step: "listener 110", status: .pass, message: "plaintext listener \(c.pop3Listeners.map(\.description).joined(separator: ", ")) offers STLS", fix: nil))
        }
        if c.allowCleartextAuthentication {
            out.append(.init(step: "cleartext login", status: .fail, message: "auth.allow_cleartext is true: passwords may cross the network unencrypted",
                             fix: "set auth.allow_cleartext: false in \(self.configurationFile)"))
        } else {
            out.append(.init(step: "cleartext login", status: .pass, message: "logins only over TLS", fix: nil))
        }
        return out
    }

    // MARK: certificate

    /// The certificate's checks, and the SHA-256 pin of the leaf for the reachability probe.
    func certificate() -> ([Finding], TrustPolicy?) {
        let c = self.configuration
        guard let certPath = c.certificatePath, let keyPath = c.privateKeyPath else {
            return ([.init(step: "certificate", status: .fail, message: "no tls.certificate / tls.key", fix: "install a certificate (e.g. certbot certonly --standalone -d \(self.host ?? "mail.example.com")) and set tls.certificate and tls.key")], nil)
        }
        var out: [Finding] = []
        let provider: TLSProvider
        do {
            provider = try TLSProvider(certificatePath: certPath, privateKeyPath: keyPath, strictSNI: c.strictSNI)
        } catch {
            return ([.init(step: "certificate", status: .fail, message: "\(error)", fix: "check that \(certPath) holds the chain (leaf first) and \(keyPath) its key")], nil)
        }
        out.append(.init(step: "certificate", status: .pass, message: "\(certPath) and its key load and match; TLS 1.2+, Mozilla intermediate suites", fix: nil))
        for warning in provider.certificateWarnings {
            out.append(.init(step: "certificate", status: .warn, message: warning.text, fix: nil))
        }
        if let notAfter = provider.notAfter {
            let days = Int(notAfter.timeIntervalSinceNow / 86_400)
            if notAfter < Date() {
                out.append(.init(step: "certificate expiry", status: .fail, message: "expired \(-days) days ago", fix: "renew it (certbot renew), then systemctl reload pop3d"))
            } else if days < 14 {
                out.append(.init(step: "certificate expiry", status: .warn, message: "\(days) days left", fix: "renew it (certbot renew), then systemctl reload pop3d"))
            } else {
                out.append(.init(step: "certificate expiry", status: .pass, message: "\(days) days left", fix: nil))
            }
        }
        if let host = self.host {
            let names = provider.serverNames
            if TLSProvider.matches(host.lowercased(), names: names) {
                out.append(.init(step: "certificate name", status: .pass, message: "covers \(host)", fix: nil))
            } else {
                out.append(.init(step: "certificate name", status: .fail, message: "does not cover \(host) (it names \(names.isEmpty ? "no DNS name" : names.joined(separator: ", ")))",
                                 fix: "get a certificate for \(host) (certbot certonly -d \(host))"))
            }
        }
        let pin = (try? String(contentsOfFile: certPath, encoding: .utf8)).flatMap { pem -> TrustPolicy? in
            guard let der = try? NIOSSLCertificateDER.first(pem) else { return nil }
            return .sha256Pin(Array(SHA256.hash(data: der)))
        }
        return (out, pin)
    }

    // MARK: reachability

    /// A TLS handshake and a POP3 greeting on each POP3S listener, through loopback and through each of this host's
    /// own non-loopback addresses (what a client on the network would reach, short of the firewall).
    func reachability(pin: TrustPolicy?) async -> [Finding] {
        guard let pin else { return [] }
        var out: [Finding] = []
        let local = Self.localAddresses()
        for listener in self.configuration.pop3sListeners {
            let wildcard = listener.host == "0.0.0.0" || listener.host == "::"
            var targets = wildcard ? ["127.0.0.1"] + local.filter { !$0.contains(":") } : [listener.host]
            if listener.host == "::" { targets += ["::1"] + local.filter { $0.contains(":") && !$0.hasPrefix("fe80") } }
            for address in targets {
                var configuration = POP3ClientConfiguration(host: address, port: listener.port, security: .implicitTLS, trust: pin)
                configuration.connectTimeout = .seconds(5)
                configuration.replyTimeout = .seconds(10)
                let report = await ServerProbe.run(configuration)
                let target = address.contains(":") ? "[\(address)]:\(listener.port)" : "\(address):\(listener.port)"
                if let tls = report.tls, report.error == nil {
                    out.append(.init(step: "reachability", status: .pass, message: "\(target): \(tls.version), \(tls.cipher ?? "?"), POP3 greeting", fix: nil))
                } else {
                    out.append(.init(step: "reachability", status: .fail, message: "\(target): \(report.error ?? "no TLS handshake")",
                                     fix: "start pop3d (systemctl start pop3d) and check its log (journalctl -u pop3d)"))
                }
            }
        }
        return out
    }

    /// This host's own IPv4 and IPv6 addresses, loopback and link-local excluded.
    static func localAddresses() -> [String] {
        var result: [String] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(list) }
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr else { continue }
            let family = Int32(address.pointee.sa_family)
            guard family == AF_INET || family == AF_INET6 else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
            guard getnameinfo(address, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
            let text = String(cString: host).split(separator: "%").first.map(String.init) ?? ""
            if text.hasPrefix("127.") || text == "::1" || text.lowercased().hasPrefix("fe80") || result.contains(text) { continue }
            result.append(text)
        }
        return result
    }

    // MARK: firewall

    /// Reads (never changes) the packet filter: nftables, else iptables, else ufw, and says whether 995 is let in.
    func firewall() -> [Finding] {
        let ports = Set(self.configuration.pop3sListeners.map(\.port))
        let port = ports.contains(995) ? 995 : (ports.first ?? 995)
        if let ruleset = Self.output(["nft", "list", "ruleset"]) {
            return [Self.judgeFirewall(ruleset: ruleset, port: port, tool: "nftables")]
        }
        if let rules = Self.output(["iptables-save"]) {
            return [Self.judgeFirewall(ruleset: rules, port: port, tool: "iptables")]
        }
        if let status = Self.output(["ufw", "status"]) {
            if status.contains("inactive") {
                return [.init(step: "firewall", status: .pass, message: "ufw inactive: nothing filters \(port)", fix: nil)]
            }
            let allowed = status.split(separator: "\n").contains { $0.hasPrefix("\(port)") && $0.contains("ALLOW") }
            return [.init(step: "firewall", status: allowed ? .pass : .fail, message: allowed ? "ufw allows \(port)" : "ufw is active and does not allow \(port)",
                          fix: allowed ? nil : "ufw allow \(port)/tcp")]
        }
        return [.init(step: "firewall", status: .warn, message: "no nft, iptables-save or ufw here (or not allowed to read them): cannot tell whether \(port) is open", fix: "run pop3d doctor as root, or check the host's firewall by hand")]
    }

    /// Whether a ruleset (nft or iptables-save) lets TCP `port` in: an input chain that drops by default needs a rule
    /// accepting the port.
    static func judgeFirewall(ruleset: String, port: Int, tool: String) -> Finding {
        let text = ruleset.lowercased()
        let dropsByDefault = text.contains("hook input") && (text.contains("policy drop") || text.contains("policy reject"))
            || text.contains(":input drop") || text.contains(":input reject")
        let lines = text.split(separator: "\n")
        let portPattern = try! Regex("dport\\s+(\\{[^}]*\\b\(port)\\b[^}]*\\}|\(port)\\b)")
        let accepts = lines.contains { $0.contains(portPattern) && $0.contains("accept") }
        let dropsPort = lines.contains { $0.contains(portPattern) && ($0.contains("drop") || $0.contains("reject")) }
        if dropsPort {
            return .init(step: "firewall", status: .fail, message: "\(tool) drops TCP \(port)", fix: tool == "nftables" ? "nft list ruleset -a, then nft delete rule … handle N for the rule that drops \(port)" : "iptables -D INPUT … (the rule that drops \(port))")
        }
        if !dropsByDefault {
            return .init(step: "firewall", status: .pass, message: "\(tool): the input chain does not drop by default", fix: nil)
        }
        if accepts {
            return .init(step: "firewall", status: .pass, message: "\(tool) accepts TCP \(port)", fix: nil)
        }
        return .init(step: "firewall", status: .fail, message: "\(tool) drops input by default and has no rule accepting TCP \(port)",
                     fix: tool == "nftables" ? "nft add rule inet filter input tcp dport \(port) accept" : "iptables -A INPUT -p tcp --dport \(port) -j ACCEPT")
    }

    static func output(_ command: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    // MARK: DNS

    func dns() -> [Finding] {
        guard let host = self.host else {
            return [.init(step: "dns", status: .warn, message: "no --host given: the name clients use was not checked", fix: "pop3d doctor --host mail.example.com --config \(self.configurationFile)")]
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else {
            return [.init(step: "dns", status: .fail, message: "\(host) does not resolve", fix: "publish A/AAAA records for \(host); pop3d dns-records --host \(host) --domain DOMAIN prints the rest")]
        }
        defer { freeaddrinfo(list) }
        var resolved: [String] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ai_next }
            var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(entry.pointee.ai_addr, entry.pointee.ai_addrlen, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 {
                let address = String(cString: text)
                if !resolved.contains(address) { resolved.append(address) }
            }
        }
        let local = Self.localAddresses() + ["127.0.0.1", "::1"]
        let here = resolved.filter { local.contains($0) }
        var out: [Finding] = []
        if here.isEmpty {
            out.append(.init(step: "dns", status: .warn, message: "\(host) resolves to \(resolved.joined(separator: ", ")), none of them this host's (\(Self.localAddresses().joined(separator: ", "))): fine behind NAT or a load balancer",
                             fix: nil))
        } else {
            out.append(.init(step: "dns", status: .pass, message: "\(host) resolves to \(here.joined(separator: ", ")) (this host)", fix: nil))
        }
        out += self.domainRecords(host: host)
        return out
    }

    /// With `--domain`: the RFC 6186 SRV record `_pop3s._tcp.DOMAIN` must name this host and port; the MX should.
    func domainRecords(host: String) -> [Finding] {
        guard let domain = self.domain else {
            return [.init(step: "dns records", status: .warn, message: "no --domain given: the SRV and MX records were not looked up",
                          fix: "pop3d doctor --host \(host) --domain DOMAIN --config \(self.configurationFile)")]
        }
        let fix = "publish what pop3d dns-records --host \(host) --domain \(domain) --config \(self.configurationFile) prints"
        let port = self.configuration.pop3sListeners.first?.port ?? 995
        let target = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "."))
        var out: [Finding] = []
        do {
            let records = try DNSQuery.srv("_pop3s._tcp.\(domain)", server: self.dnsServer)
            if records.contains(where: { $0.target.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")) == target && $0.port == port }) {
                out.append(.init(step: "dns srv", status: .pass, message: "_pop3s._tcp.\(domain) names \(host):\(port) (RFC 6186)", fix: nil))
            } else {
                let found = records.isEmpty ? "no record" : records.map { "\($0.target):\($0.port)" }.joined(separator: ", ")
                out.append(.init(step: "dns srv", status: .fail, message: "_pop3s._tcp.\(domain): \(found), not \(host):\(port): clients that look it up (RFC 6186) will not find this server", fix: fix))
            }
        } catch {
            out.append(.init(step: "dns srv", status: .warn, message: "_pop3s._tcp.\(domain) not looked up: \(error)", fix: "give --dns-server HOST:PORT"))
        }
        do {
            let exchanges = try DNSQuery.mx(domain, server: self.dnsServer)
            if exchanges.contains(where: { $0.exchange.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")) == target }) {
                out.append(.init(step: "dns mx", status: .pass, message: "\(domain)'s MX names \(host)", fix: nil))
            } else {
                out.append(.init(step: "dns mx", status: .warn, message: "\(domain)'s MX is \(exchanges.isEmpty ? "missing" : exchanges.map(\.exchange).joined(separator: ", ")): fine if mail arrives elsewhere and reaches pop3d by LMTP", fix: fix))
            }
        } catch {
            out.append(.init(step: "dns mx", status: .warn, message: "\(domain)'s MX not looked up: \(error)", fix: "give --dns-server HOST:PORT"))
        }
        return out
    }

    // MARK: privileges

    func privileges() -> [Finding] {
        var out: [Finding] = []
        let c = self.configuration
        if let user = c.user {
            if getpwnam(user) == nil {
                out.append(.init(step: "privileges", status: .fail, message: "user: \(user) does not exist", fix: "useradd --system --no-create-home \(user)"))
            } else {
                out.append(.init(step: "privileges", status: .pass, message: "started as root, pop3d runs as \(user) after binding", fix: nil))
            }
        } else {
            out.append(.init(step: "privileges", status: .warn, message: "no user: set; pop3d runs as the uid every passwd-file entry shares, or as the user that starts it", fix: "set user: pop3d (an account that owns no mail)"))
        }
        if c.storageBackend == .maildir, !c.maildirTemplate.hasPrefix("~") {
            // The mail folder must be the run-as user's (virtual mail), or the accounts' own (privilege separation).
            let root = Self.existingAncestor(of: c.maildirTemplate.components(separatedBy: "%").first ?? c.maildirTemplate)
            var st = stat()
            if stat(root, &st) == 0 {
                let owner = getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(st.st_uid)"
                if let user = c.user, let entry = getpwnam(user), entry.pointee.pw_uid != st.st_uid, st.st_uid == 0, st.st_mode & 0o002 == 0 {
                    out.append(.init(step: "mail folder", status: .warn, message: "\(root) belongs to \(owner), not to \(user): pop3d (as \(user)) cannot create Maildirs there",
                                     fix: "chown \(user): \(root)"))
                } else {
                    out.append(.init(step: "mail folder", status: .pass, message: "\(root) belongs to \(owner)", fix: nil))
                }
            }
        }
        if c.usesPasswdFile {
            var st = stat()
            if stat(c.passwdFile, &st) != 0 {
                out.append(.init(step: "passwd-file", status: .fail, message: "\(c.passwdFile): \(String(cString: strerror(errno)))", fix: "pop3d user add NAME --config \(self.configurationFile)"))
            } else if st.st_mode & 0o022 != 0 {
                out.append(.init(step: "passwd-file", status: .fail, message: "\(c.passwdFile) is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8)))", fix: "chmod 0640 \(c.passwdFile)"))
            } else if st.st_mode & 0o004 != 0 {
                out.append(.init(step: "passwd-file", status: .warn, message: "\(c.passwdFile) is readable by everyone (its hashes can be attacked offline)", fix: "chmod 0640 \(c.passwdFile); chgrp \(c.group ?? c.user ?? "pop3d") \(c.passwdFile)"))
            } else {
                out.append(.init(step: "passwd-file", status: .pass, message: "\(c.passwdFile) mode \(String(st.st_mode & 0o777, radix: 8)), owner uid \(st.st_uid)", fix: nil))
            }
        }
        return out
    }

    // MARK: storage

    /// Free space where the mail is, and one delivery and removal in a scratch Maildir under state_dir.
    func storage() -> [Finding] {
        var out: [Finding] = []
        let c = self.configuration
        if c.storageBackend == .maildir {
            let root = Self.existingAncestor(of: c.maildirTemplate.components(separatedBy: "%").first ?? c.maildirTemplate)
            var fs = statvfs()
            if statvfs(root, &fs) == 0 {
                let free = Int64(fs.f_bavail) * Int64(fs.f_frsize)
                let text = "\(free / (1 << 20)) MiB free on \(root)"
                if free < 100 << 20 {
                    out.append(.init(step: "storage", status: .fail, message: text, fix: "free space on that file system; deliveries fail with 451 when it is full"))
                } else if free < 1 << 30 {
                    out.append(.init(step: "storage", status: .warn, message: text, fix: nil))
                } else {
                    out.append(.init(step: "storage", status: .pass, message: text, fix: nil))
                }
            }
        }
        let scratch = FileSystem.join(c.stateFolder, "doctor-scratch-\(getpid())")
        do {
            _ = try FileSystem.makeDirectories(c.stateFolder, mode: 0o700)
            let name = try MaildirDelivery.deliver(Array("Subject: pop3d doctor\n\nscratch\n".utf8), toMaildir: scratch)
            let stored = FileManager.default.fileExists(atPath: FileSystem.join(scratch, "new/" + name))
            try? FileManager.default.removeItem(atPath: scratch)
            out.append(.init(step: "delivery", status: stored ? .pass : .fail, message: stored ? "a scratch message was delivered (fsynced) and removed under \(c.stateFolder)" : "the scratch message is not where it was delivered", fix: nil))
        } catch {
            try? FileManager.default.removeItem(atPath: scratch)
            out.append(.init(step: "delivery", status: .fail, message: "scratch delivery under \(c.stateFolder) failed: \(error)", fix: "check the owner and free space of \(c.stateFolder)"))
        }
        return out
    }

    static func existingAncestor(of path: String) -> String {
        var candidate = path.isEmpty ? "/" : path
        while !FileManager.default.fileExists(atPath: candidate) && candidate != "/" {
            candidate = (candidate as NSString).deletingLastPathComponent
            if candidate.isEmpty { return "/" }
        }
        return candidate
    }
}

/// The DER of the first certificate in a PEM text.
enum NIOSSLCertificateDER {
    static func first(_ pem: String) throws -> [UInt8]? {
        guard let begin = pem.range(of: "-----BEGIN CERTIFICATE-----"), let end = pem.range(of: "-----END CERTIFICATE-----", range: begin.upperBound..<pem.endIndex)
        else { return nil }
        let base64 = pem[begin.upperBound..<end.lowerBound].filter { !$0.isWhitespace }
        return Data(base64Encoded: String(base64)).map(Array.init)
    }
}
