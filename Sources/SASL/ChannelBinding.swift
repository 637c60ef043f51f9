import Crypto
import X509

/// TLS channel binding data for SCRAM-…-PLUS (RFC 5056, RFC 5929, RFC 9266).
public struct ChannelBinding: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// A hash of the server's certificate (RFC 5929 §4). Works with every TLS version and needs nothing from the
        /// TLS library beyond the certificate, so both ends of swift-pop3 use it.
        case tlsServerEndPoint = "tls-server-end-point"
        /// TLS keying material exporter (RFC 9266). swift-nio-ssl does not export keying material, so swift-pop3
        /// does not offer it; a client asking for it fails like a bad binding does.
        case tlsExporter = "tls-exporter"
        /// Not defined for TLS 1.3 (RFC 9266 §1); never used.
        case tlsUnique = "tls-unique"
    }

    public var kind: Kind
    public var data: [UInt8]

    public init(kind: Kind, data: [UInt8]) {
        self.kind = kind
        self.data = data
    }

    /// `tls-server-end-point` for a DER certificate: its hash with the hash function of the certificate's
    /// signature algorithm, SHA-256 when that is MD5 or SHA-1 (RFC 5929 §4.1). Certificates signed with Ed25519
    /// (no hash function of their own) use SHA-256, as OpenSSL-based peers do. Nil for a certificate that
    /// does not parse.
    public static func tlsServerEndPoint(certificateDER der: [UInt8]) -> ChannelBinding? {
        guard let certificate = try? Certificate(derEncoded: der) else { return nil }
        let data: [UInt8]
        switch certificate.signatureAlgorithm {
        case .sha384WithRSAEncryption, .ecdsaWithSHA384: data = Array(SHA384.hash(data: der))
        case .sha512WithRSAEncryption, .ecdsaWithSHA512: data = Array(SHA512.hash(data: der))
        default: data = Array(SHA256.hash(data: der))
        }
        return ChannelBinding(kind: .tlsServerEndPoint, data: data)
    }
}
