import Crypto
import Foundation
import _CryptoExtras
import SwiftASN1
import X509

/// Checks an operator's certificate chain against Mozilla's "intermediate" certificate guidance (docs/security-cases.md 22):
/// RSA ≥ 2048 bits or ECDSA P-256/P-384, SHA-256 or stronger signatures, a chain in order, a sane lifetime.
///
/// Errors make `pop3d serve`/`check-config` refuse the certificate (on SIGHUP the old one stays); warnings are
/// logged and printed by `check-config`.
public enum CertificateAudit {
    public struct Finding: Sendable, Equatable, CustomStringConvertible {
        public enum Severity: String, Sendable { case error, warning }
        public var severity: Severity
        public var text: String

        public var description: String { "\(self.severity.rawValue): \(self.text)" }
    }

    public static let minimumRSABits = 2048
    /// Mozilla intermediate allows lifetimes up to 730 days (docs/security-cases.md 22); longer is worth a warning only, as
    /// private CAs often issue long-lived certificates.
    public static let maximumLifetimeDays = 730
    /// Warn when the leaf expires within this many days.
    public static let expiryWarningDays = 14

    /// Signature OIDs that are broken or deprecated: MD2, MD5, SHA-1 with RSA, ECDSA or DSA.
    static let weakSignatureOIDs = [
        "1.2.840.113549.1.1.2", "1.2.840.113549.1.1.4", "1.2.840.113549.1.1.5",
        "1.2.840.10045.4.1", "1.2.840.10040.4.3",
    ]

    /// Audits the PEM chain in `pemText` (leaf first) at time `now`.
    public static func findings(pemText: String, now: Date = Date()) -> [Finding] {
        let documents: [PEMDocument]
        do {
            documents = try PEMDocument.parseMultiple(pemString: pemText).filter { $0.discriminator == "CERTIFICATE" }
        } catch {
            return [Finding(severity: .error, text: "the certificate file is not valid PEM: \(error)")]
        }
        guard !documents.isEmpty else { return [Finding(severity: .error, text: "no certificate in the file")] }
        var chain: [Certificate] = []
        for (position, document) in documents.enumerated() {
            do {
                chain.append(try Certificate(derEncoded: document.derBytes))
            } catch {
                // swift-crypto refuses RSA keys under 2048 bits while parsing, so a weak key usually lands here.
                let name = position == 0 ? "the leaf certificate" : "certificate \(position + 1) of the chain"
                return [Finding(severity: .error, text: "\(name) cannot be used (RSA keys need at least \(minimumRSABits) bits): \(error)")]
            }
        }
        var result: [Finding] = []
        let leaf = chain[0]
        result += self.keyFindings(leaf.publicKey)
        for (position, certificate) in chain.enumerated() where !(position > 0 && certificate.issuer == certificate.subject) {
            // A self-signed root's own signature is never checked by clients; every other one is.
            let name = position == 0 ? "the leaf certificate" : "certificate \(position + 1) of the chain"
            let algorithm = "\(certificate.signatureAlgorithm)"
            if certificate.signatureAlgorithm == .sha1WithRSAEncryption || self.weakSignatureOIDs.contains(where: { algorithm.contains($0) }) {
                result.append(Finding(severity: .error, text: "\(name) is signed with a broken hash (\(algorithm)); use SHA-256 or stronger"))
            }
        }
        for index in chain.indices.dropLast() where chain[index].issuer != chain[index + 1].subject {
            result.append(Finding(
                severity: .warning,
                text: "certificate \(index + 2) of the chain did not issue certificate \(index + 1): put the leaf first, then each issuer"
            ))
        }
        if chain.count == 1, leaf.issuer != leaf.subject {
            result.append(Finding(severity: .warning, text: "the file holds only the leaf; add the intermediate certificates after it"))
        }
        if leaf.notValidAfter < now {
            result.append(Finding(severity: .warning, text: "the leaf certificate expired on \(leaf.notValidAfter); clients will refuse it"))
        } else if leaf.notValidAfter < now.addingTimeInterval(Double(expiryWarningDays) * 86_400) {
            result.append(Finding(severity: .warning, text: "the leaf certificate expires on \(leaf.notValidAfter)"))
        }
        if leaf.notValidBefore > now {
            result.append(Finding(severity: .warning, text: "the leaf certificate is not valid before \(leaf.notValidBefore)"))
        }
        let lifetimeDays = Int(leaf.notValidAfter.timeIntervalSince(leaf.notValidBefore) / 86_400)
        if lifetimeDays > maximumLifetimeDays {
            result.append(Finding(
                severity: .warning,
                text: "the leaf certificate is valid for \(lifetimeDays) days (Mozilla intermediate: at most \(maximumLifetimeDays))"
            ))
        }
        let names = (try? leaf.extensions.subjectAlternativeNames)?.compactMap { name -> String? in
            if case .dnsName(let dns) = name { return dns }
            return nil
        } ?? []
        if names.isEmpty {
            result.append(Finding(severity: .warning, text: "the leaf certificate names no DNS host (subjectAltName); clients verify the host name against it"))
        }
        return result
    }

    /// RSA keys under 2048 bits never get here: swift-crypto refuses them while the certificate is parsed, which
    /// `findings` reports as an error.
    static func keyFindings(_ key: Certificate.PublicKey) -> [Finding] {
        if _RSA.Signing.PublicKey(key) != nil || P256.Signing.PublicKey(key) != nil || P384.Signing.PublicKey(key) != nil {
            return []
        }
        return [Finding(severity: .warning, text: "the leaf's key is \(key); Mozilla intermediate expects RSA ≥ \(minimumRSABits) or ECDSA P-256/P-384")]
    }
}
