import Accounts
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import MailStore

/// The zero-configuration local set-up behind `pop3d dev`.
///
/// Creates (once) a data folder with `pop3d.yaml`, a self-signed certificate, a passwd-file, and a `demo` account
/// whose password is in `demo-password` and whose Maildir holds three sample messages. Later runs reuse it and
/// renew the certificate when it nears its end.
public struct DevEnvironment: Sendable {
    public let folder: String
    public var configurationFile: String { self.folder + "/pop3d.yaml" }
    public var certificateFile: String { self.folder + "/tls/cert.pem" }
    public var keyFile: String { self.folder + "/tls/key.pem" }
    public var passwordFile: String { self.folder + "/demo-password" }
    public static let demoUser = "demo"
    /// Lines printed when something was created.
    public private(set) var created: [String] = []

    public static func prepare(folder: String, host: String, pop3sPort: Int, pop3Port: Int, lmtpPort: Int) throws -> DevEnvironment {
        let absolute = URL(fileURLWithPath: folder).standardizedFileURL.path
        var environment = DevEnvironment(folder: absolute)
        let fm = FileManager.default
        try fm.createDirectory(atPath: absolute + "/tls", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])

        if DevCertificate.needsRenewal(certificateAt: environment.certificateFile) {
            let (certificate, key) = try DevCertificate.make()
            try Self.write(key, to: environment.keyFile, mode: 0o600)
            try Self.write(certificate, to: environment.certificateFile, mode: 0o644)
            environment.created.append("certificate \(environment.certificateFile) (self-signed, localhost/127.0.0.1/::1, 365 days)")
        }
        if !fm.fileExists(atPath: environment.configurationFile) {
            let formatted = { (port: Int) in host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
            let yaml = """
                # pop3d configuration written by `pop3d dev`. Reference: README.md, "Configuration".
                listen:
                  pop3s: "\(formatted(pop3sPort))"   # implicit TLS
                  pop3: "\(formatted(pop3Port))"    # plaintext + STLS (login only after STLS)
                  lmtp: ["\(formatted(lmtpPort))"]  # LMTP delivery from an MTA (loopback clients only)
                tls:
                  certificate: tls/cert.pem
                  key: tls/key.pem
                passwd_file: users
                maildir: "mail/%u"

                """
            try Self.write(yaml, to: environment.configurationFile, mode: 0o644)
            environment.created.append("configuration \(environment.configurationFile)")
        }
        let passwd = absolute + "/users"
        if !fm.fileExists(atPath: passwd) {
            let password = Self.randomPassword()
            try PasswdFileEditor(path: passwd).add(user: Self.demoUser, password: password, scheme: .scramSHA256)
            try Self.write(password + "\n", to: environment.passwordFile, mode: 0o600)
            environment.created.append("account \(Self.demoUser), password in \(environment.passwordFile)")
            let maildir = absolute + "/mail/" + Self.demoUser
            for message in Self.sampleMessages() {
                _ = try MaildirDelivery.deliver(Array(message.utf8), toMaildir: maildir)
            }
            environment.created.append("3 sample messages in \(maildir)")
        }
        return environment
    }

    static func write(_ text: String, to path: String, mode: Int) throws {
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: mode]) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: temporary])
        }
        guard rename(temporary, path) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }

    static func randomPassword() -> String {
        let alphabet = Array("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        var generator = SystemRandomNumberGenerator()
        return String((0..<20).map { _ in alphabet[Int(generator.next(upperBound: UInt64(alphabet.count)))] })
    }

    static func sampleMessages(now: Date = Date()) -> [String] {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss Z"
        let date = formatter.string(from: now)
        return [
            """
            From: swift-pop3 <postmaster@localhost>
            To: demo@localhost
            Subject: Welcome to swift-pop3
            Date: \(date)
            Message-ID: <welcome.1@localhost>

            Hello! This message was put here by `pop3d dev`.
            Fetch it with curl, Python's poplib or any mail client.

            """,
            """
            From: swift-pop3 <postmaster@localhost>
            To: demo@localhost
            Subject: Dots and long lines
            Date: \(date)
            Message-ID: <welcome.2@localhost>

            A line that starts with a dot follows; POP3 byte-stuffs it on the wire:
            .this line starts with a dot
            ..and this one with two
            .

            """,
            """
            From: swift-pop3 <postmaster@localhost>
            To: demo@localhost
            Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=
            Date: \(date)
            Message-ID: <welcome.3@localhost>
            MIME-Version: 1.0
            Content-Type: text/plain; charset=utf-8
            Content-Transfer-Encoding: 8bit

            Grüße aus dem Maildir. Delete me with DELE and QUIT.

            """,
        ]
    }
}
