import Foundation
import Testing

@testable import POP3Server

/// docs/security-cases.md 22: an operator's certificate is checked against Mozilla "intermediate" when pop3d loads it.
@Suite("Certificate audit")
struct CertificateAuditTests {
    let day: TimeInterval = 86_400

    func texts(_ findings: [CertificateAudit.Finding]) -> [String] { findings.map(\.description) }

    @Test func freshDevCertificateHasNoFindings() throws {
        let (pem, _) = try DevCertificate.make()
        #expect(CertificateAudit.findings(pemText: pem).isEmpty)
    }

    @Test func validityProblemsAreWarnings() throws {
        let now = Date()
        let expired = try DevCertificate.make(now: now.addingTimeInterval(-400 * self.day)).certificate
        #expect(self.texts(CertificateAudit.findings(pemText: expired, now: now)).contains { $0.hasPrefix("warning: the leaf certificate expired on") })
        let ending = try DevCertificate.make(now: now.addingTimeInterval(-360 * self.day)).certificate
        #expect(self.texts(CertificateAudit.findings(pemText: ending, now: now)).contains { $0.hasPrefix("warning: the leaf certificate expires on") })
        let future = try DevCertificate.make(now: now.addingTimeInterval(10 * self.day)).certificate
        #expect(self.texts(CertificateAudit.findings(pemText: future, now: now)).contains { $0.hasPrefix("warning: the leaf certificate is not valid before") })
        #expect(CertificateAudit.findings(pemText: expired, now: now).allSatisfy { $0.severity == .warning })
    }

    @Test func garbageIsAnError() {
        #expect(self.texts(CertificateAudit.findings(pemText: "hello")) == ["error: no certificate in the file"])
    }

    /// Weak keys and SHA-1 signatures made by OpenSSL (swift-crypto cannot make them) are refused, and
    /// TLSProvider will not load them; a chain out of order or missing its intermediate is a warning.
    @Test func openSSLMadeCertificates() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("CertificateAudit-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func openssl(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["openssl"] + arguments
            process.currentDirectoryURL = URL(fileURLWithPath: dir)
            process.standardError = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "openssl \(arguments.joined(separator: " "))")
        }
        func read(_ name: String) throws -> String { try String(contentsOfFile: dir + "/" + name, encoding: .utf8) }
        let subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
        try openssl(["req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "k1024.pem", "-out", "c1024.pem", "-days", "30"] + subject)
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-sha1", "-nodes", "-keyout", "ksha1.pem", "-out", "csha1.pem", "-days", "30"] + subject)
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "krsa.pem", "-out", "crsa.pem", "-days", "30"] + subject)
        // A CA and a leaf it signs.
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=Test CA"])
        try openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr"] + subject)
        try openssl(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "30", "-copy_extensions", "copy"])

        let weak = CertificateAudit.findings(pemText: try read("c1024.pem"))
        #expect(weak.count == 1 && weak[0].severity == .error && weak[0].text.contains("2048 bits"), "\(weak)")
        let sha1 = CertificateAudit.findings(pemText: try read("csha1.pem"))
        #expect(sha1.contains { $0.severity == .error && $0.text.contains("broken hash") }, "\(sha1)")
        #expect(CertificateAudit.findings(pemText: try read("crsa.pem")).isEmpty)
        #expect(throws: ConfigurationError.self) { try TLSProvider(certificatePath: dir + "/c1024.pem", privateKeyPath: dir + "/k1024.pem") }
        #expect(throws: ConfigurationError.self) { try TLSProvider(certificatePath: dir + "/csha1.pem", privateKeyPath: dir + "/ksha1.pem") }

        let leaf = try read("leaf.pem"), ca = try read("ca.pem")
        #expect(CertificateAudit.findings(pemText: leaf + ca).isEmpty, "leaf, then its issuer")
        #expect(self.texts(CertificateAudit.findings(pemText: leaf)) == ["warning: the file holds only the leaf; add the intermediate certificates after it"])
        #expect(self.texts(CertificateAudit.findings(pemText: ca + leaf)).contains { $0.contains("put the leaf first") })
    }
}
