import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import POP3NIO
import SASL
import X509

/// The server's TLS policy: TLS 1.2+, Mozilla "intermediate" suites, ALPN `pop3`, strict SNI.
///
/// swift-nio-ssl's defaults allow TLS 1.0 and non-forward-secret suites (docs/security-cases.md cases 17–18), so every
/// value is set here. The certificate and key are re-read by `reload()` (SIGHUP); connections already up keep
/// the context they started with.
public final class TLSProvider: Sendable {
    /// Mozilla "intermediate" TLS 1.2 suites that BoringSSL offers (ECDHE + AEAD only; it has no DHE).
    /// TLS 1.3 suites are always the AEAD defaults.
    /// - SeeAlso: https://ssl-config.mozilla.org/guidelines/5.7.json
    public static let intermediateCipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    /// X25519, P-256, P-384.
    public static let curves: [NIOTLSCurve] = [NIOTLSCurve(rawValue: 29), NIOTLSCurve(rawValue: 23), NIOTLSCurve(rawValue: 24)]

    struct Material: Sendable {
        let context: NIOSSLContext
        /// DNS names of the certificate (SAN); empty means "any SNI name is accepted".
        let serverNames: [String]
        /// What `CertificateAudit` found short of an error (errors refuse the certificate).
        let warnings: [CertificateAudit.Finding]
        /// `tls-server-end-point` of the leaf certificate, for SCRAM-…-PLUS.
        let channelBinding: ChannelBinding?
        let notAfter: Date?
        /// The same identity and policy for HTTPS (ALPN http/1.1): the autoconfig service.
        let httpsContext: NIOSSLContext
    }

    public let certificatePath: String
    public let privateKeyPath: String
    public let strictSNI: Bool
    private let material: NIOLockedValueBox<Material>

    public init(certificatePath: String, privateKeyPath: String, strictSNI: Bool = true) throws {
        self.certificatePath = certificatePath
        self.privateKeyPath = privateKeyPath
        self.strictSNI = strictSNI
        self.material = NIOLockedValueBox(try Self.load(certificatePath: certificatePath, privateKeyPath: privateKeyPath))
    }

    /// Re-reads certificate and key. On failure the old ones stay in use and the error is thrown.
    public func reload() throws {
        let fresh = try Self.load(certificatePath: self.certificatePath, privateKeyPath: self.privateKeyPath)
        self.material.withLockedValue { $0 = fresh }
    }

    public var serverNames: [String] { self.material.withLockedValue { $0.serverNames } }

    /// The current certificate's audit warnings (expiry, lifetime, chain order, …), for the log and check-config.
    public var certificateWarnings: [CertificateAudit.Finding] { self.material.withLockedValue { $0.warnings } }

    static func load(certificatePath: String, privateKeyPath: String) throws -> Material {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw ConfigurationError(key: "tls.certificate", "cannot load PEM certificate \(certificatePath): \(error)")
        }
        guard !chain.isEmpty else { throw ConfigurationError(key: "tls.certificate", "no certificate in \(certificatePath)") }
        do {
            key = try NIOSSLPrivateKey(file: privateKeyPath, format: .pem)
        } catch {
            throw ConfigurationError(key: "tls.key", "cannot load PEM private key \(privateKeyPath): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = Self.intermediateCipherSuites
        configuration.curves = Self.curves
        configuration.applicationProtocols = [ClientHelloGuard.alpnProtocol]
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw ConfigurationError(key: "tls.key", "certificate and key do not form a usable TLS identity: \(error)")
        }
        let leafPEM = try String(contentsOfFile: certificatePath, encoding: .utf8)
        let findings = CertificateAudit.findings(pemText: leafPEM)
        if let error = findings.first(where: { $0.severity == .error }) {
            throw ConfigurationError(key: "tls.certificate", "\(certificatePath): \(error.text)")
        }
        var names: [String] = []
        let leaf = try? X509.Certificate(pemEncoded: Self.firstPEMBlock(leafPEM))
        if let leaf, let sans = try? leaf.extensions.subjectAlternativeNames {
            for name in sans {
                if case .dnsName(let dns) = name { names.append(dns.lowercased()) }
            }
        }
        let binding = (try? chain[0].toDERBytes()).flatMap(ChannelBinding.tlsServerEndPoint(certificateDER:))
        configuration.applicationProtocols = ["http/1.1"]
        let httpsContext = try NIOSSLContext(configuration: configuration)
        return Material(
            context: context, serverNames: names, warnings: findings, channelBinding: binding, notAfter: leaf?.notValidAfter,
            httpsContext: httpsContext
        )
    }

    static func firstPEMBlock(_ text: String) -> String {
        guard let end = text.range(of: "-----END CERTIFICATE-----") else { return text }
        return String(text[..<end.upperBound])
    }

    /// Whether an SNI name is one we hold a certificate for (exact or one-label wildcard match).
    public func accepts(serverName: String) -> Bool {
        guard self.strictSNI else { return true }
        // An SNI must be a host name (RFC 6066 §3), but some clients send the address they connect to: treat an
        // IP literal like no SNI at all.
        if (try? SocketAddress(ipAddress: serverName, port: 0)) != nil { return true }
        let names = self.serverNames
        guard !names.isEmpty else { return true }
        return Self.matches(serverName.lowercased(), names: names)
    }

    static func matches(_ name: String, names: [String]) -> Bool {
        for pattern in names {
            if pattern == name { return true }
            if pattern.hasPrefix("*."), let dot = name.firstIndex(of: "."), name[name.index(after: dot)...] == pattern.dropFirst(2) {
                return true
            }
        }
        return false
    }

    /// The handlers that start a TLS server session: ClientHello guard, TLS, handshake deadline. `channelBinding`
    /// receives the binding of the certificate this session presents (a reload may change it for later ones);
    /// `observation`, the version and cipher once the handshake completed, or why it failed.
    public func makeHandlers(
        handshakeTimeout: TimeAmount,
        channelBinding: NIOLockedValueBox<ChannelBinding?>? = nil,
        observation: ServerTLSObservation? = nil
    ) throws -> [ChannelHandler] {
        let (context, binding) = self.material.withLockedValue { ($0.context, $0.channelBinding) }
        channelBinding?.withLockedValue { $0 = binding }
        let guardHandler = ClientHelloGuard(
            acceptsServerName: { [self] in self.accepts(serverName: $0) },
            onRefusal: { alert in observation?.failed(alert == .noApplicationProtocol ? .alpn : .sni) }
        )
        guard let observation else {
            return [guardHandler, NIOSSLServerHandler(context: context), HandshakeDeadlineHandler(timeout: handshakeTimeout)]
        }
        let (before, after) = observation.makeHandlers()
        return [before, guardHandler, NIOSSLServerHandler(context: context), HandshakeDeadlineHandler(timeout: handshakeTimeout), after]
    }

    /// The TLS context for HTTPS (ALPN http/1.1) with the current certificate and key: the autoconfig service takes
    /// it for each connection, so a SIGHUP reload reaches it too.
    public var httpsContext: NIOSSLContext { self.material.withLockedValue { $0.httpsContext } }

    /// The leaf certificate's notAfter (for the certificate-expiry metric).
    public var notAfter: Date? { self.material.withLockedValue { $0.notAfter } }
}
