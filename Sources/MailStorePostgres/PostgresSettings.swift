import Foundation

/// `storage.postgres`: where the database is and how to talk to it. Parsed and checked at start; the password
/// itself is read from `password_file` (never from the URL or the command line).
public struct PostgresSettings: Sendable, Equatable {
    public enum TLSMode: String, Sendable, CaseIterable {
        /// No TLS (the only choice for a Unix socket).
        case disable
        /// TLS when the server offers it, without certificate verification (libpq's `prefer`).
        case prefer
        /// TLS or no connection, without certificate verification (libpq's `require`).
        case require
        /// TLS, the chain verified against `ca_file` and the host name against the certificate.
        case verifyFull = "verify-full"
    }

    public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        /// The socket file itself (`<dir>/.s.PGSQL.<port>`).
        case unixSocket(path: String)

        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unixSocket(let path): "unix:\(path)"
            }
        }
    }

    public var endpoint: Endpoint
    public var user: String
    public var database: String
    /// The URL as configured (it holds no password: one in the URL is refused).
    public var url: String
    public var passwordFile: String?
    public var poolSize: Int
    public var tls: TLSMode
    public var caFile: String?
    /// Longest a statement may run before PostgreSQL cancels it (`statement_timeout`).
    public var statementTimeout: Duration
    /// Longest a login or delivery waits for a pooled connection before `-ERR [SYS/TEMP]`.
    public var poolTimeout: Duration
    /// Start even when the session's `synchronous_commit` is off (a commit acknowledged could then be lost in a
    /// crash of PostgreSQL; docs/security-cases.md 60).
    public var allowAsyncCommit: Bool

    public static let defaultPoolSize = 8
    public static let defaultStatementTimeout = Duration.seconds(30)
    public static let defaultPoolTimeout = Duration.seconds(5)

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// Parses `postgresql://USER@HOST[:PORT]/DATABASE` (also `postgres://`, `[IPv6]`, and `?host=/run/postgresql`
    /// for a Unix socket folder, as libpq reads it). A password in the URL is refused.
    public init(url: String) throws(ParseError) {
        let schemes = ["postgresql://", "postgres://"]
        guard let scheme = schemes.first(where: { url.hasPrefix($0) }) else {
            // Echoed without anything before an "@", which may hold a password.
            let shown = url.lastIndex(of: "@").map { "…" + url[$0...] } ?? url
            throw ParseError("expected postgresql://USER@HOST[:PORT]/DATABASE, got \"\(shown)\"")
        }
        var rest = Substring(url.dropFirst(scheme.count))
        var query: [String: String] = [:]
        if let mark = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: mark)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2, let key = parts[0].removingPercentEncoding, let value = parts[1].removingPercentEncoding else {
                    throw ParseError("malformed query parameter \"\(pair)\"")
                }
                query[key] = value
            }
            rest = rest[..<mark]
        }
        guard let slash = rest.firstIndex(of: "/") else { throw ParseError("the URL names no database (…/DATABASE)") }
        let authority = rest[..<slash]
        let database = String(rest[rest.index(after: slash)...]).removingPercentEncoding ?? ""
        guard !database.isEmpty, !database.contains("/") else { throw ParseError("the URL names no database (…/DATABASE)") }
        guard let at = authority.lastIndex(of: "@") else { throw ParseError("the URL names no user (USER@HOST)") }
        let userInfo = authority[..<at]
        guard !userInfo.contains(":") else {
            throw ParseError("a password in the URL is refused: put it in storage.postgres.password_file (mode 0600)")
        }
        let user = String(userInfo).removingPercentEncoding ?? ""
        guard !user.isEmpty else { throw ParseError("the URL names no user (USER@HOST)") }
        var hostPort = authority[authority.index(after: at)...]
        var host: String
        var port = 5432
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw ParseError("unclosed [ in the host") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            hostPort = hostPort[hostPort.index(after: close)...]
            if !hostPort.isEmpty {
                guard hostPort.hasPrefix(":") else { throw ParseError("expected :PORT after ]") }
                hostPort = hostPort.dropFirst()
                guard let number = Int(hostPort), (1...65535).contains(number) else { throw ParseError("bad port \"\(hostPort)\"") }
                port = number
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            guard let number = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(number) else {
                throw ParseError("bad port \"\(hostPort[hostPort.index(after: colon)...])\"")
            }
            port = number
        } else {
            host = String(hostPort)
        }
        if let socketFolder = query.removeValue(forKey: "host") {
            guard socketFolder.hasPrefix("/") else { throw ParseError("?host= must be an absolute socket folder, got \"\(socketFolder)\"") }
            self.endpoint = .unixSocket(path: socketFolder + "/.s.PGSQL.\(port)")
        } else {
            guard !host.isEmpty else { throw ParseError("the URL names no host (use ?host=/run/postgresql for a Unix socket)") }
            self.endpoint = .tcp(host: host, port: port)
        }
        if let unknown = query.keys.sorted().first {
            throw ParseError("unknown URL parameter \"\(unknown)\" (only host= is read; TLS is storage.postgres.tls)")
        }
        self.url = url
        self.user = user
        self.database = database
        self.passwordFile = nil
        self.poolSize = Self.defaultPoolSize
        self.tls = .prefer
        self.caFile = nil
        self.statementTimeout = Self.defaultStatementTimeout
        self.poolTimeout = Self.defaultPoolTimeout
        self.allowAsyncCommit = false
    }
}
