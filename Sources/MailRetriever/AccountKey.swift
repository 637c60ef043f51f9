import Crypto
import Foundation
import SystemIO

/// Identifies an account for state files: user, host, port. The host is compared case-insensitively.
public struct AccountKey: Sendable, Hashable, CustomStringConvertible {
    public var user: String
    public var host: String
    public var port: Int

    public init(user: String, host: String, port: Int) {
        self.user = user
        self.host = host.lowercased()
        self.port = port
    }

    /// A file-system-safe name, e.g. `alice@mail.example.com_995`; bytes outside `[A-Za-z0-9.+_-]` are
    /// percent-encoded (an `@` in the user name becomes `%40`, so the last `@` separates user and host),
    /// and a leading `.` too. Over-long stems are cut and suffixed with a digest of the whole.
    public var fileStem: String {
        let stem = Self.encode(user) + "@" + Self.encode(host) + "_" + String(port)
        guard stem.utf8.count > 180 else { return stem }
        let digest = SHA256.hash(data: Array(stem.utf8)).prefix(8).map { hex2($0) }.joined()
        return String(decoding: stem.utf8.prefix(160), as: UTF8.self) + "~" + digest
    }

    public var description: String { "\(user)@\(host):\(port)" }

    private static func encode(_ text: String) -> String {
        var result = ""
        for (index, byte) in text.utf8.enumerated() {
            let safe =
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "+")
                || (byte == UInt8(ascii: ".") && index > 0)
            if safe {
                result.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                result += "%" + hex2(byte).uppercased()
            }
        }
        return result
    }
}

func hex2(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef".utf8)
    return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]], as: UTF8.self)
}

func hexString<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    bytes.map(hex2).joined()
}

/// Where the retriever keeps per-account state (journal, lock, spool files).
public enum StatePaths {
    /// `$XDG_STATE_HOME/pop3` (default `~/.local/state/pop3`), created with mode 0700 if missing.
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        let base: String
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") {
            base = state
        } else {
            base = FileSystem.join(homeDirectory(environment: environment), ".local/state")
        }
        let directory = FileSystem.join(base, "pop3")
        try FileSystem.makeDirectories(directory, mode: 0o700)
        return directory
    }

    /// `$HOME`, else the password database's entry for the current user.
    public static func homeDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let home = environment["HOME"], !home.isEmpty { return home }
        if let entry = getpwuid(getuid()), let dir = entry.pointee.pw_dir { return String(cString: dir) }
        return "/"
    }

    /// Expands a leading `~` or `~/` (the current user) or `~name/` (another user).
    public static func expandTilde(
        _ path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> String {
        guard path.hasPrefix("~") else { return path }
        let rest = path.dropFirst()
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let name = String(rest[rest.startIndex..<slash])
        let home: String
        if name.isEmpty {
            home = homeDirectory(environment: environment)
        } else if let entry = getpwnam(name), let dir = entry.pointee.pw_dir {
            home = String(cString: dir)
        } else {
            return path
        }
        return home + String(rest[slash...])
    }
}
