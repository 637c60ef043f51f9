import Crypto
import NIOSSL
import POP3Core
import POP3NIO
import X509

/// What `pop3 probe` learns of a server: greeting, TLS, capabilities, login mechanisms and the certificate chain as
/// presented (with the SHA-256 pins a user can copy), even when verification fails.
public struct ProbeReport: Sendable, Equatable, Encodable {
    public struct TLS: Sendable, Equatable, Encodable {
        public var version: String
        public var cipher: String?
        public var alpn: String?
    }

    public var greeting: String?
    /// Present once the handshake succeeded and the certificate verified.
    public var tls: TLS?
    public var capabilities: [String] = []
    /// The ways to log in the server announces, e.g. `SASL PLAIN`, `USER/PASS`.
    public var login: [String] = []
    /// What `--auth auto` would use on this server (nil: nothing usable).
    public var automaticMethod: AuthenticationMethod?
    /// Why the session failed, if it did.
    public var error: String?
    /// The chain as the server presented it (nil without TLS), or why it could not be read.
    public var certificateChain: [CertificateDescription]?
    public var certificateChainError: String?
}

/// One certificate as presented, for a person deciding whether to pin it.
public struct CertificateDescription: Sendable, Equatable, Encodable {
    /// SHA-256 of the DER certificate, hex (a `--pin` value with `sha256:` in front).
    public var sha256: String
    /// SHA-256 of the SubjectPublicKeyInfo, hex (also a `--pin` value).
    public var publicKeySHA256: String?
    /// Subject and issuer as printable text (server-controlled bytes sanitised).
    public var subject: String?
    public var issuer: String?
    public var validity: String?

    public init(der: [UInt8]) {
        self.sha256 = Self.hex(SHA256.hash(data: der))
        if let spki = try? NIOSSLCertificate(bytes: der, format: .der).extractPublicKey().toSPKIBytes() {
            self.publicKeySHA256 = Self.hex(SHA256.hash(data: spki))
        }
        if let certificate = try? X509.Certificate(derEncoded: der) {
            self.subject = sanitize(Array(String(describing: certificate.subject).utf8))
            self.issuer = sanitize(Array(String(describing: certificate.issuer).utf8))
            self.validity = "\(certificate.notValidBefore) to \(certificate.notValidAfter)"
        }
    }

    static func hex(_ digest: SHA256.Digest) -> String {
        digest.map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
        }.joined()
    }
}

public enum ServerProbe {
    /// Connects, reads what the server offers, QUITs, then reads the certificate chain on a second connection (which
    /// does not verify, so that a chain that fails verification is still shown).
    public static func run(_ configuration: POP3ClientConfiguration) async -> ProbeReport {
        var report = ProbeReport()
        do {
            let connection = try await POP3Connection.connect(configuration)
            report.greeting = connection.greeting.text
            if let info = connection.tls {
                report.tls = .init(version: info.version, cipher: info.cipherSuite.map(TLSCipherSuite.name), alpn: info.alpn)
            }
            report.capabilities = connection.capabilities
            let mechanisms = connection.serverCapabilities.saslMechanisms
            if !mechanisms.isEmpty { report.login.append("SASL " + mechanisms.joined(separator: " ")) }
            if connection.serverCapabilities.announcesUser { report.login.append("USER/PASS") }
            report.automaticMethod = connection.resolve(.auto)
            try? await connection.quit()
        } catch {
            report.error = "\(error)"
        }
        if configuration.security != .insecurePlaintext {
            do {
                report.certificateChain = try await POP3Connection.inspectCertificates(configuration).map(CertificateDescription.init(der:))
            } catch {
                report.certificateChainError = "\(error)"
            }
        }
        return report
    }
}
