import Crypto
import Foundation
import SwiftASN1
import X509

/// A self-signed end-entity certificate for local use: ECDSA P-256, valid for `localhost`, `127.0.0.1` and `::1`.
///
/// The profile (CA:FALSE, no key usage, EKU serverAuth, subject and authority key identifiers, SAN, ≤ 365 days) is one that OpenSSL,
/// GnuTLS, BoringSSL and sslyze all accept as their CA file (DESIGN, "Contracts and defaults").
public enum DevCertificate {
    public static let lifetime: TimeInterval = 365 * 24 * 3600
    /// A certificate closer than this to its end is renewed when `pop3d dev` starts.
    public static let renewalMargin: TimeInterval = 30 * 24 * 3600

    /// Returns (certificate PEM, private key PEM).
    public static func make(now: Date = Date(), dnsNames: [String] = ["localhost"]) throws -> (certificate: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let name = try DistinguishedName {
            OrganizationName("swift-pop3 development")
            CommonName(dnsNames.first ?? "localhost")
        }
        let identifier = SubjectKeyIdentifier(hash: publicKey)
        var sans: [GeneralName] = dnsNames.map { .dnsName($0) }
        sans.append(.ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1])))
        sans.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice([UInt8](repeating: 0, count: 15) + [1]))))
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            // No KeyUsage: BoringSSL's issuer check (X509_check_issued) refuses a self-issued trust anchor whose
            // key usage lacks keyCertSign, and keyCertSign on a CA:FALSE certificate fails strict OpenSSL checks.
            try ExtendedKeyUsage([.serverAuth])
            identifier
            AuthorityKeyIdentifier(keyIdentifier: identifier.keyIdentifier)
            SubjectAlternativeNames(sans)
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(Self.lifetime - 600),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions,
            issuerPrivateKey: Certificate.PrivateKey(key)
        )
        return (try certificate.serializeAsPEM().pemString + "\n", key.pemRepresentation + "\n")
    }

    /// Whether the PEM certificate at `path` is missing, unreadable, or near its end.
    public static func needsRenewal(certificateAt path: String, now: Date = Date()) -> Bool {
        guard let pem = try? String(contentsOfFile: path, encoding: .utf8),
            let certificate = try? Certificate(pemEncoded: TLSProvider.firstPEMBlock(pem))
        else { return true }
        return certificate.notValidAfter.timeIntervalSince(now) < Self.renewalMargin
    }
}
