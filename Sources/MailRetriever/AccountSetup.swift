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

    /// Longest user name taken from a server's autoconfig document (an RFC 5321 path is at most 256 octets).
    public static let maximumUserNameOctets = 254

    /// Whether `name` (from a remote autoconfig document) can go into a URL and the accounts file: not empty, at
    /// most `maximumUserNameOctets`, no white space or control characters.
    public static func isUsableUserName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= Self.maximumUserNameOctets
            && !name.unicodeScalars.contains { $0.properties.isWhitespace || $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }
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
        try DNSQuery.srv(name, server: self.dnsServer).map { ($0.target, $0.port) }
    }
}

public struct SetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

