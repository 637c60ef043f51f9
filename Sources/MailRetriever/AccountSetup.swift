import AsyncHTTPClient
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import NIOCore
import NIOPosix
import NIOSSL
import POP3Client
import SystemIO

/// `pop3 setup ADDRESS`: finds the POP3 server of an address the way Thunderbird does, then writes an account.
/// Candidates, in order: the domain's autoconfig document (`https://autoconfig.DOMAIN/mail/config-v1.1.xml`, then
/// `https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml`), the RFC 6186 SRV record `_pop3s._tcp.DOMAIN`,
/// and the guesses `pop.DOMAIN` and `mail.DOMAIN` on 995. Each is probed (TLS, certificate verified, capabilities).
public struct AccountDiscovery: Sendable {
    public struct Candidate: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int
        /// Where it came from: autoconfig, srv, guess.
        public var source: String
        /// The user name the document asks for (%EMAILADDRESS% or %EMAILLOCALPART% resolved), if it says.
        public var username: String?
        public var description: String { "\(self.host):\(self.port) (\(self.source))" }
    }

    public var address: String
    /// Overrides the autoconfig URLs (tests: an HTTPS server of their own): `BASE/mail/config-v1.1.xml?emailaddress=…`.
    public var autoconfigBase: String?
    /// The DNS server for the SRV lookup, `HOST:PORT` (default: the first nameserver of /etc/resolv.conf, port 53).
    public var dnsServer: String?
    public var trust: TrustPolicy
    public var timeout: TimeAmount = .seconds(10)

    public init(address: String, autoconfigBase: String? = nil, dnsServer: String? = nil, trust: TrustPolicy = .system) {
        self.address = address
        self.autoconfigBase = autoconfigBase
        self.dnsServer = dnsServer
        self.trust = trust
    }

    public var domain: String { String(self.address.split(separator: "@").last ?? "").lowercased() }
    public var localPart: String { String(self.address.split(separator: "@").first ?? "") }

    /// Every candidate, best first, without duplicates; `log` hears each lookup and its outcome.
    public func candidates(log: (String) -> Void) async -> [Candidate] {
        var found: [Candidate] = []
        let urls = self.autoconfigBase.map { ["\($0)/mail/config-v1.1.xml?emailaddress=\(Self.percentEncoded(self.address))"] }
            ?? ["https://autoconfig.\(self.domain)/mail/config-v1.1.xml?emailaddress=\(Self.percentEncoded(self.address))",
                "https://\(self.domain)/.well-known/autoconfig/mail/config-v1.1.xml"]
        for url in urls {
            do {
                let servers = try await self.autoconfig(url)
                log("autoconfig \(url): \(servers.isEmpty ? "no POP3 over TLS" : servers.map(\.description).joined(separator: ", "))")
                found += servers
                if !servers.isEmpty { break }
            } catch {
                log("autoconfig \(url): \(error)")
            }
        }
        do {
            let records = try self.srv("_pop3s._tcp.\(self.domain)")
            log("DNS SRV _pop3s._tcp.\(self.domain): \(records.isEmpty ? "none" : records.map { "\($0.target):\($0.port)" }.joined(separator: ", "))")
            found += records.map { Candidate(host: $0.target, port: $0.port, source: "srv") }
        } catch {
            log("DNS SRV _pop3s._tcp.\(self.domain): \(error)")
        }
        found += ["pop", "mail"].map { Candidate(host: "\($0).\(self.domain)", port: 995, source: "guess") }
        var unique: [Candidate] = []
        for candidate in found where !unique.contains(where: { $0.host == candidate.host && $0.port == candidate.port }) {
            unique.append(candidate)
        }
        return unique
    }

    // MARK: autoconfig

    func autoconfig(_ url: String) async throws -> [Candidate] {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if case .caFile(let path) = self.trust { tls.trustRoots = .file(path) }
        configuration.tlsConfiguration = tls
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let result: Result<[Candidate], any Error>
        do {
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Accept", value: "application/xml, text/xml")
            let response = try await client.execute(request, timeout: self.timeout)
            guard response.status == .ok else { throw SetupError("HTTP \(response.status.code)") }
            let body = try await response.body.collect(upTo: 256 * 1024)
            result = .success(Self.parseClientConfig(Data(body.readableBytesView), address: self.address))
        } catch {
            result = .failure(error)
        }
        try? await client.shutdown()
        return try result.get()
    }

    /// The POP3-over-TLS servers of a clientConfig document (SSL first, then STARTTLS on 995's conventions are not
    /// offered: pop3 fetch uses implicit TLS for autoconfigured accounts).
    public static func parseClientConfig(_ data: Data, address: String) -> [Candidate] {
        let collector = ClientConfigCollector()
        let parser = XMLParser(data: data)
        parser.delegate = collector
        guard parser.parse() else { return [] }
        let local = String(address.split(separator: "@").first ?? "")
        return collector.servers.compactMap { server -> Candidate? in
            guard server["type"] == "pop3", server["socketType"]?.uppercased() == "SSL",
                let host = server["hostname"], !host.isEmpty, let port = server["port"].flatMap(Int.init), (1...65535).contains(port)
            else { return nil }
            let username = server["username"].map {
                $0.replacingOccurrences(of: "%EMAILADDRESS%", with: address).replacingOccurrences(of: "%EMAILLOCALPART%", with: local)
            }
            return Candidate(host: host, port: port, source: "autoconfig", username: username)
        }
    }

    private final class ClientConfigCollector: NSObject, XMLParserDelegate {
        var servers: [[String: String]] = []
        private var current: [String: String]?
        private var text = ""

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
            if name == "incomingServer" { self.current = ["type": attributes["type"] ?? ""] }
            self.text = ""
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { self.text += string }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if name == "incomingServer", let current = self.current {
                self.servers.append(current)
                self.current = nil
            } else if self.current != nil, ["hostname", "port", "socketType", "username", "authentication"].contains(name) {
                self.current?[name] = self.text.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }
    }

    static func percentEncoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: ".-_"))) ?? text
    }

    // MARK: DNS SRV

    /// SRV records of `name`, by priority then weight (RFC 2782); a target of "." means "not offered".
    func srv(_ name: String) throws -> [(target: String, port: Int)] {
        let server = try self.resolver()
        let id = UInt16.random(in: 0...UInt16.max)
        let answer = try DNSQuery.ask(server: server, id: id, name: name, type: 33, timeoutSeconds: 5)
        return try DNSQuery.srvRecords(answer, id: id)
            .filter { $0.target != "." && $0.target != "" }
            .sorted { ($0.priority, -$0.weight) < ($1.priority, -$1.weight) }
            .map { ($0.target, $0.port) }
    }

    func resolver() throws -> (host: String, port: Int) {
        if let text = self.dnsServer {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
                throw SetupError("--dns-server wants HOST:PORT, got \(text)")
            }
            return (String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
        }
        let conf = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? ""
        for line in conf.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2, parts[0] == "nameserver" { return (String(parts[1]), 53) }
        }
        throw SetupError("no nameserver in /etc/resolv.conf (give --dns-server)")
    }
}

public struct SetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A DNS query over UDP, and the SRV records of its answer (RFC 1035, RFC 2782), by hand: no resolver library offers
/// SRV lookups to a given server.
enum DNSQuery {
    static func ask(server: (host: String, port: Int), id: UInt16, name: String, type: UInt16, timeoutSeconds: Int) throws -> [UInt8] {
        var query: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count < 64 else { throw SetupError("not a DNS name: \(name)") }
            query.append(UInt8(bytes.count))
            query += bytes
        }
        query += [0, UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
        let address = try SocketAddress(ipAddress: server.host, port: server.port)
        let fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SetupError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard address.withSockAddr({ connect(fd, $0, socklen_t($1)) }) == 0, send(fd, query, query.count, 0) == query.count else {
            throw SetupError("cannot ask \(server.host):\(server.port): \(String(cString: strerror(errno)))")
        }
        var reply = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &reply, reply.count, 0)
        guard count > 0 else { throw SetupError("no answer from \(server.host):\(server.port)") }
        return Array(reply[0..<count])
    }

    struct SRV: Equatable {
        var priority: Int
        var weight: Int
        var port: Int
        var target: String
    }

    static func srvRecords(_ reply: [UInt8], id: UInt16) throws -> [SRV] {
        guard reply.count >= 12, UInt16(reply[0]) << 8 | UInt16(reply[1]) == id else { throw SetupError("a DNS answer to another question") }
        let rcode = reply[3] & 0x0F
        if rcode == 3 { return [] }  // NXDOMAIN
        guard rcode == 0 else { throw SetupError("DNS error \(rcode)") }
        let questions = Int(reply[4]) << 8 | Int(reply[5])
        let answers = Int(reply[6]) << 8 | Int(reply[7])
        var offset = 12
        for _ in 0..<questions {
            _ = try Self.name(reply, at: &offset)
            offset += 4
        }
        var out: [SRV] = []
        for _ in 0..<answers {
            _ = try Self.name(reply, at: &offset)
            guard offset + 10 <= reply.count else { throw SetupError("a truncated DNS answer") }
            let type = Int(reply[offset]) << 8 | Int(reply[offset + 1])
            let length = Int(reply[offset + 8]) << 8 | Int(reply[offset + 9])
            offset += 10
            guard offset + length <= reply.count else { throw SetupError("a truncated DNS answer") }
            if type == 33, length >= 7 {
                var at = offset + 6
                let target = try Self.name(reply, at: &at)
                out.append(SRV(
                    priority: Int(reply[offset]) << 8 | Int(reply[offset + 1]),
                    weight: Int(reply[offset + 2]) << 8 | Int(reply[offset + 3]),
                    port: Int(reply[offset + 4]) << 8 | Int(reply[offset + 5]),
                    target: target
                ))
            }
            offset += length
        }
        return out
    }

    /// A (possibly compressed) name at `offset`, which moves past it.
    static func name(_ message: [UInt8], at offset: inout Int) throws -> String {
        var labels: [String] = []
        var position = offset
        var jumped = false
        for _ in 0..<128 {
            guard position < message.count else { throw SetupError("a truncated DNS name") }
            let length = Int(message[position])
            if length == 0 {
                if !jumped { offset = position + 1 }
                return labels.isEmpty ? "." : labels.joined(separator: ".")
            }
            if length & 0xC0 == 0xC0 {
                guard position + 1 < message.count else { throw SetupError("a truncated DNS name") }
                if !jumped { offset = position + 2 }
                jumped = true
                position = (length & 0x3F) << 8 | Int(message[position + 1])
                continue
            }
            guard position + 1 + length <= message.count else { throw SetupError("a truncated DNS name") }
            labels.append(String(decoding: message[(position + 1)...(position + length)], as: UTF8.self))
            position += 1 + length
        }
        throw SetupError("a DNS name that loops")
    }
}
