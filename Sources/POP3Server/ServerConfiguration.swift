import Accounts
import Configuration
import Foundation
import LMTPCore
import MailStore
import MailStorePostgres
import POP3Core
import Privileges
import SASL
import SystemIO
import SystemPackage

/// A listening address, `host:port` or `[v6]:port`.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init?(parsing text: String) {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[close...].hasPrefix("]:") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
        self.host = String(host)
        self.port = port
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// An LMTP listener: a Unix socket (the usual for a local MTA) or a TCP address.
public enum LMTPListenAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(String)
    case tcp(ListenAddress)

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let address): "\(address)"
        }
    }
}

/// LMTP delivery (RFC 2033) for MTAs: off unless `listen.lmtp` lists a listener.
public struct LMTPConfiguration: Sendable, Equatable {
    public var listeners: [LMTPListenAddress] = []
    /// Mode of each Unix socket (`lmtp.socket_mode`, octal text in the file).
    public var socketMode: UInt32 = 0o660
    /// Besides loopback, the client networks a TCP listener serves (LMTP has no authentication).
    public var trustedNetworks: [CIDRNetwork] = []
    /// `user+detail@domain` is delivered to `user` (`lmtp.recipient_delimiter`; empty turns it off).
    public var recipientDelimiter = "+"
    /// When not empty, a recipient's domain must be one of these (case-insensitive).
    public var domains: [String] = []
    /// Over quota answers 452 4.2.2 (the MTA retries) instead of 552 5.2.2 (it bounces).
    public var quotaFullTempfail = false
    public var maximumRecipients = LMTPDefaults.maximumRecipients
    public var idleTimeout = LMTPDefaults.idleTimeout
    public var maximumConnections = LMTPDefaults.maximumConnections
    public var maximumBadCommands = LMTPDefaults.maximumBadCommands
    /// The name in the greeting and in Received: lines; the system's host name when nil.
    public var hostname: String?

    public init() {}
}

/// Policies announced in CAPA and enforced (RFC 2449 §6).
public struct ServerPolicy: Sendable, Equatable {
    /// `LOGIN-DELAY n` (`policy.login_delay`, seconds; 0 = none, not announced).
    public var loginDelaySeconds = 0
    /// RFC 6856 `UTF8 USER` and `LANG` (`policy.utf8`, on by default).
    public var utf8 = true
    /// `EXPIRE n` (`policy.expire_days`; nil = NEVER, the default): a message first retrieved n or more days ago
    /// is removed when the user's next session starts; 0 removes retrieved messages at QUIT. A passwd-file extra
    /// field `expire_days=N|never` overrides it per account.
    public var expireDays: Int? = nil

    public init() {}

    /// The EXPIRE of an account, from its passwd-file extra fields or the server's default. A value that does not
    /// parse is ignored for the default (and logged by the caller): a typo must not delete mail sooner.
    public func expireDays(extraFields: [String]) -> (days: Int?, invalid: String?) {
        for field in extraFields where field.hasPrefix("expire_days=") {
            let value = String(field.dropFirst("expire_days=".count))
            if value.lowercased() == "never" { return (nil, nil) }
            if let days = Int(value), (0...36_500).contains(days) { return (days, nil) }
            return (self.expireDays, field)
        }
        return (self.expireDays, nil)
    }
}

/// Every server limit, with defaults from `POP3Defaults`.
public struct ServerLimits: Sendable, Equatable {
    public var commandLineLength = POP3Defaults.maximumCommandLineLength
    public var saslLineLength = POP3Defaults.maximumSASLLineLength
    public var badCommandsBeforeLogin = POP3Defaults.maximumBadCommandsBeforeLogin
    public var badCommandsAfterLogin = POP3Defaults.maximumBadCommandsAfterLogin
    public var preAuthenticationTimeout = POP3Defaults.preAuthenticationTimeout
    public var idleTimeout = POP3Defaults.idleTimeout
    public var handshakeTimeout = POP3Defaults.handshakeTimeout
    public var connectionsPerAddress = POP3Defaults.maximumConnectionsPerAddress
    public var connections = POP3Defaults.maximumConnections
    /// How long SIGTERM waits for sessions to finish before closing them.
    public var shutdownGracePeriod: Duration = .seconds(30)
    /// Messages (plus one per Maildir) whose Maildir index stays in memory between sessions, so that an unchanged
    /// maildrop opens without being listed; 0 turns the cache off.
    public var indexCacheMessages = MaildirProvider.defaultIndexCacheCapacity
    /// Messages one session lists at most, the oldest first (`limits.maildrop_messages`).
    public var maildropMessages = POP3Defaults.maximumMaildropMessages
    /// The largest message LMTP accepts, announced as SIZE (`limits.message_size`).
    public var messageSize = LMTPDefaults.maximumMessageSize

    public init() {}
}

/// The effective server configuration.
public struct ServerConfiguration: Sendable, Equatable {
    public var pop3sListeners: [ListenAddress] = []
    public var pop3Listeners: [ListenAddress] = []
    public var certificatePath: String?
    public var privateKeyPath: String?
    /// Refuse SNI names the certificate does not cover (alert 112).
    public var strictSNI = true
    /// The passwd-file; empty only with `storage.backend: postgres`, whose accounts are then in the database
    /// (`usesPasswdFile`). When both are there, the passwd-file wins for authentication.
    public var passwdFile: String
    public var usesPasswdFile: Bool { !self.passwdFile.isEmpty }
    /// `storage.backend`: Maildir (the default) or PostgreSQL (`storage.postgres`).
    public var storageBackend = StorageBackend.maildir
    public var postgres: PostgresSettings?
    /// `%u` user, `%n` local part, `%d` domain; `~/` = home from the passwd-file; relative to the config folder.
    public var maildirTemplate: String
    public var allowCleartextAuthentication = false
    /// The least time before a failed login is answered, wrong password or unknown user alike (`auth.failure_delay`,
    /// as Dovecot's `auth_failure_delay`); on top of the escalating per-address penalty. A right password is
    /// never delayed by it.
    public var authenticationFailureDelay: Duration = .seconds(2)
    /// SASL mechanisms offered, in CAPA order (`auth.mechanisms`).
    public var saslMechanisms: [SASLMechanism] = ServerConfiguration.defaultSASLMechanisms
    public static let defaultSASLMechanisms: [SASLMechanism] = [.plain, .scramSHA256Plus, .scramSHA256]
    /// PBKDF2 iterations of new SCRAM hashes (`pop3d user add --scheme SCRAM-SHA-256`) and of dummy exchanges
    /// (`auth.scram_iterations`, at least 4096).
    public var scramIterations = SCRAMDefaults.iterations
    /// OAuth 2.0 resource server (`auth.oauth2`): JWT bearer tokens for OAUTHBEARER and XOAUTH2.
    public var oauth2: OAuth2Settings?
    /// Client networks exempt from the authentication penalty (loopback is not trusted by default).
    public var trustedNetworks: [CIDRNetwork] = []
    /// Proxies (e.g. HAProxy with `send-proxy-v2`) whose connections must start with a PROXY v2 header that
    /// names the real client; nobody else can claim an address.
    public var proxyNetworks: [CIDRNetwork] = []
    public var limits = ServerLimits()
    public var lmtp = LMTPConfiguration()
    public var policy = ServerPolicy()
    /// pop3d's own durable state (`state_dir`): EXPIRE's first-retrieval times.
    public var stateFolder: String
    public var logLevel = "info"
    /// `log.format`: one line of text per event, or one JSON object per line.
    public var logFormat: LogFormat = .text
    public enum LogFormat: String, Sendable { case text, json }
    /// `metrics.listen`: where `GET /metrics` is served (Prometheus text format); off when nil.
    public var metricsListener: ListenAddress?
    /// `control.socket`: the Unix socket of `pop3d who`, `kick` and `penalty` (mode 0600, the run-as user's). Loaded
    /// configurations default to `run/pop3d.sock` beside the file (`controlSocketIsDefault`); nil: none.
    public var controlSocket: String?
    public var controlSocketIsDefault = false
    /// `autoconfig.listen`: HTTPS for Thunderbird's autoconfig and Outlook's Autodiscover (off when nil), and the
    /// host name those documents give clients (`autoconfig.hostname`; default: the certificate's first DNS name).
    public var autoconfigListener: ListenAddress?
    public var autoconfigHostname: String?
    /// The file this configuration was loaded from (SIGHUP reads it again); nil when made in code.
    public var sourceFile: String?
    /// The listeners came from the command line (`pop3d dev`): a reload keeps them, whatever the file says.
    public var listenersFromCommandLine = false
    /// Started as root, run as this user (and group) after binding; see `PrivilegeDrop`.
    public var user: String?
    public var group: String?
    /// Accounts whose passwd-file uid differs from the process's get their mail accessed by a worker running as
    /// that uid/gid (see `PrivilegeSeparation`), but only from this uid up (never root).
    public var firstValidUID = PrivilegeSeparation.defaultFirstValidUID

    public init(passwdFile: String, maildirTemplate: String, stateFolder: String? = nil) {
        self.passwdFile = passwdFile
        self.maildirTemplate = maildirTemplate
        self.stateFolder = stateFolder ?? (URL(fileURLWithPath: passwdFile).deletingLastPathComponent().path + "/state")
    }

    public var tlsConfigured: Bool { self.certificatePath != nil && self.privateKeyPath != nil }

    /// What the operator should know about a configuration that loads but weakens a default.
    public var warnings: [String] {
        var warnings: [String] = []
        if self.authenticationFailureDelay == .zero {
            warnings.append("auth.failure_delay: 0 answers a wrong password at once; password guessing gets faster (default 2)")
        }
        if self.storageBackend == .postgres {
            if self.postgres?.tls == .prefer || self.postgres?.tls == .require, case .tcp(let host, _) = self.postgres?.endpoint, !Self.isLoopback(host) {
                warnings.append("storage.postgres.tls: \(self.postgres!.tls.rawValue) does not verify the database's certificate; use verify-full with ca_file off this host")
            }
        }
        return warnings
    }
}

/// `storage.backend`.
public enum StorageBackend: String, Sendable, CaseIterable {
    case maildir
    case postgres
}

extension ServerConfiguration {
    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// A configuration error that names its key.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var key: String
    public var message: String

    public init(key: String, _ message: String) {
        self.key = key
        self.message = message
    }

    public var description: String { "\(self.key): \(self.message)" }
}

extension ServerConfiguration {
    /// Environment variables with this prefix override file keys: `POP3D_LISTEN_POP3S`, `POP3D_MAILDIR`, …
    public static let environmentPrefix = "POP3D_"

    /// Loads a YAML file plus `POP3D_*` environment overrides and validates every key.
    public static func load(
        file path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> ServerConfiguration {
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let folder = URL(fileURLWithPath: absolute).deletingLastPathComponent().path
        let overrides = environment.reduce(into: [String: String]()) { result, entry in
            if entry.key.hasPrefix(environmentPrefix) { result[String(entry.key.dropFirst(environmentPrefix.count))] = entry.value }
        }
        let text: String
        do {
            text = try String(contentsOfFile: absolute, encoding: .utf8)
        } catch {
            throw ConfigurationError(key: "(file)", "cannot read \(absolute): \(error)")
        }
        try ConfigurationKeys.check(yaml: text, environment: environment)
        let reader: ConfigReader
        do {
            reader = ConfigReader(providers: [
                EnvironmentVariablesProvider(environmentVariables: overrides),
                try await FileProvider<YAMLSnapshot>(filePath: FilePath(absolute)),
            ])
        } catch {
            throw ConfigurationError(key: "(file)", "cannot read \(absolute): \(error)")
        }
        var configuration = try self.parse(reader, relativeTo: folder)
        configuration.sourceFile = absolute
        return configuration
    }

    static func parse(_ reader: ConfigReader, relativeTo folder: String) throws -> ServerConfiguration {
        let config = NullAwareReader(reader: reader)
        func resolve(_ path: String) -> String {
            if path.hasPrefix("/") || path.hasPrefix("~") { return path }
            return URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: folder, isDirectory: true)).standardizedFileURL.path
        }
        func addresses(_ key: String) throws -> [ListenAddress] {
            let texts: [String]
            if let one = config.string(forKey: ConfigKey(key)) {
                texts = [one]
            } else if let many = config.stringArray(forKey: ConfigKey(key)) {
                texts = many
            } else {
                return []
            }
            return try texts.map { text in
                guard let address = ListenAddress(parsing: text) else {
                    throw ConfigurationError(key: key, "expected HOST:PORT or [IPv6]:PORT, got \"\(text)\"")
                }
                return address
            }
        }
        func int(_ key: String, _ range: ClosedRange<Int>, default value: Int) throws -> Int {
            guard let text = config.string(forKey: ConfigKey(key)) else { return value }
            guard let number = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw ConfigurationError(key: key, "expected a whole number, got \"\(text)\"")
            }
            guard range.contains(number) else {
                throw ConfigurationError(key: key, "must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
            }
            return number
        }
        func bool(_ key: String, default value: Bool) throws -> Bool {
            guard let text = config.string(forKey: ConfigKey(key)) else { return value }
            switch text.lowercased() {
            case "true", "yes", "on", "1": return true
            case "false", "no", "off", "0": return false
            default: throw ConfigurationError(key: key, "expected true or false, got \"\(text)\"")
            }
        }
        func seconds(_ key: String, _ range: ClosedRange<Int>, default value: Duration) throws -> Duration {
            .seconds(try int(key, range, default: Int(value.components.seconds)))
        }

        let backendText = config.string(forKey: "storage.backend") ?? "maildir"
        guard let backend = StorageBackend(rawValue: backendText) else {
            throw ConfigurationError(key: "storage.backend", "expected maildir or postgres, got \"\(backendText)\"")
        }
        let passwd = config.string(forKey: "passwd_file") ?? ""
        guard !passwd.isEmpty || backend == .postgres else {
            throw ConfigurationError(key: "passwd_file", "required: path of a Dovecot-format passwd-file (or storage.backend: postgres)")
        }
        var maildir = config.string(forKey: "maildir") ?? ""
        if maildir.isEmpty {
            guard backend == .postgres else {
                throw ConfigurationError(key: "maildir", "required: e.g. \"mail/%u\" or \"~/Maildir\"")
            }
            maildir = "mail/%u"
        }
        var result = ServerConfiguration(
            passwdFile: passwd.isEmpty ? "" : resolve(passwd),
            maildirTemplate: maildir.hasPrefix("~/") ? maildir : resolve(maildir),
            stateFolder: resolve("state")
        )
        result.storageBackend = backend
        if backend == .postgres {
            result.postgres = try Self.parsePostgres(config, resolve: resolve, int: int, bool: bool)
        } else {
            for key in ConfigurationKeys.all where key.hasPrefix("storage.postgres.") && config.string(forKey: ConfigKey(key)) != nil {
                throw ConfigurationError(key: key, "only with storage.backend: postgres")
            }
        }
        result.pop3sListeners = try addresses("listen.pop3s")
        result.pop3Listeners = try addresses("listen.pop3")
        let lmtpTexts: [String] = config.stringArray(forKey: "listen.lmtp") ?? config.string(forKey: "listen.lmtp").map { [$0] } ?? []
        result.lmtp.listeners = try lmtpTexts.map { text in
            if text.hasPrefix("unix:") {
                let path = String(text.dropFirst("unix:".count))
                guard !path.isEmpty else { throw ConfigurationError(key: "listen.lmtp", "expected unix:PATH, got \"\(text)\"") }
                let resolved = resolve(path)
                // sockaddr_un holds 108 bytes with the terminating NUL.
                guard resolved.utf8.count < 108 else { throw ConfigurationError(key: "listen.lmtp", "socket path too long (over 107 bytes): \(resolved)") }
                return .unix(resolved)
            }
            guard let address = ListenAddress(parsing: text) else {
                throw ConfigurationError(key: "listen.lmtp", "expected unix:PATH, HOST:PORT or [IPv6]:PORT, got \"\(text)\"")
            }
            return .tcp(address)
        }
        if result.pop3sListeners.isEmpty && result.pop3Listeners.isEmpty {
            throw ConfigurationError(key: "listen", "no listener: set listen.pop3s and/or listen.pop3")
        }
        result.certificatePath = config.string(forKey: "tls.certificate").map(resolve)
        result.privateKeyPath = config.string(forKey: "tls.key").map(resolve)
        if result.certificatePath == nil, !result.pop3sListeners.isEmpty {
            throw ConfigurationError(key: "tls.certificate", "required with listen.pop3s")
        }
        if result.certificatePath != nil, result.privateKeyPath == nil {
            throw ConfigurationError(key: "tls.key", "required with tls.certificate")
        }
        result.strictSNI = try bool("tls.strict_sni", default: true)
        if let lifetime = config.string(forKey: "tls.ticket_lifetime"), !lifetime.isEmpty {
            throw ConfigurationError(key: "tls.ticket_lifetime", Self.ticketLifetimeUnsupported)
        }
        result.allowCleartextAuthentication = try bool("auth.allow_cleartext", default: false)
        result.authenticationFailureDelay = try seconds("auth.failure_delay", 0...60, default: result.authenticationFailureDelay)
        result.scramIterations = try int(
            "auth.scram_iterations",
            SCRAMDefaults.minimumIterations...SCRAMDefaults.maximumIterations,
            default: result.scramIterations
        )
        if let jwks = config.string(forKey: "auth.oauth2.jwks"), !jwks.isEmpty {
            if OAuth2Settings.isURL(jwks), let problem = OAuth2URL.problem(jwks) {
                throw ConfigurationError(key: "auth.oauth2.jwks", problem)
            }
            guard let issuer = config.string(forKey: "auth.oauth2.issuer"), !issuer.isEmpty else {
                throw ConfigurationError(key: "auth.oauth2.issuer", "required with auth.oauth2.jwks: the exact iss of the tokens")
            }
            guard let audience = config.string(forKey: "auth.oauth2.audience"), !audience.isEmpty else {
                throw ConfigurationError(key: "auth.oauth2.audience", "required with auth.oauth2.jwks: a value the tokens' aud must contain")
            }
            var introspection: OAuth2Introspection?
            if let url = config.string(forKey: "auth.oauth2.introspection_url"), !url.isEmpty {
                if let problem = OAuth2URL.problem(url) { throw ConfigurationError(key: "auth.oauth2.introspection_url", problem) }
                guard let file = config.string(forKey: "auth.oauth2.client_credentials_file"), !file.isEmpty else {
                    throw ConfigurationError(key: "auth.oauth2.client_credentials_file", "required with introspection_url: a 0600 file with one line CLIENT_ID:CLIENT_SECRET")
                }
                let (clientID, secret) = try Self.readClientCredentials(resolve(file))
                introspection = OAuth2Introspection(url: url, clientID: clientID, clientSecret: secret, credentialsFile: resolve(file))
            } else if config.string(forKey: "auth.oauth2.client_credentials_file") != nil {
                throw ConfigurationError(key: "auth.oauth2.client_credentials_file", "only with auth.oauth2.introspection_url")
            }
            result.oauth2 = OAuth2Settings(
                jwksPath: OAuth2Settings.isURL(jwks) ? jwks : resolve(jwks),
                issuer: issuer,
                audience: audience,
                usernameClaim: config.string(forKey: "auth.oauth2.username_claim") ?? "email",
                clockSkew: try int("auth.oauth2.clock_skew", 0...600, default: OAuth2Settings.defaultClockSkew),
                introspection: introspection
            )
            result.saslMechanisms += [.oauthBearer, .xoauth2]
        } else {
            for key in ["auth.oauth2.issuer", "auth.oauth2.audience", "auth.oauth2.username_claim", "auth.oauth2.introspection_url", "auth.oauth2.client_credentials_file", "auth.oauth2.clock_skew"]
            where config.string(forKey: ConfigKey(key)) != nil {
                throw ConfigurationError(key: key, "needs auth.oauth2.jwks")
            }
        }
        var mechanismNames: [String]? = config.stringArray(forKey: "auth.mechanisms")
        if mechanismNames == nil, let text = config.string(forKey: "auth.mechanisms") {
            mechanismNames = text.split(whereSeparator: { (c: Character) -> Bool in c == "," || c == " " }).map { String($0) }
        }
        if let names = mechanismNames {
            var mechanisms: [SASLMechanism] = []
            for name in names {
                guard let mechanism = SASLMechanism(name: name) else {
                    throw ConfigurationError(
                        key: "auth.mechanisms",
                        "unknown mechanism \"\(name)\"; known: \(SASLMechanism.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                if (mechanism == .oauthBearer || mechanism == .xoauth2) && result.oauth2 == nil {
                    throw ConfigurationError(key: "auth.mechanisms", "\(mechanism) needs auth.oauth2 (jwks, issuer, audience)")
                }
                if !mechanisms.contains(mechanism) { mechanisms.append(mechanism) }
            }
            guard !mechanisms.isEmpty else { throw ConfigurationError(key: "auth.mechanisms", "empty: list at least one mechanism (USER/PASS is always offered)") }
            result.saslMechanisms = mechanisms
        }
        func networks(_ key: String) throws -> [CIDRNetwork] {
            let texts: [String] = config.stringArray(forKey: ConfigKey(key)) ?? config.string(forKey: ConfigKey(key)).map { [$0] } ?? []
            return try texts.map { text in
                guard let network = CIDRNetwork(parsing: text) else {
                    throw ConfigurationError(key: key, "expected an address or CIDR network, got \"\(text)\"")
                }
                return network
            }
        }
        result.trustedNetworks = try networks("trusted_networks")
        result.proxyNetworks = try networks("proxy.trusted_networks")
        if !result.pop3Listeners.isEmpty && !result.tlsConfigured && !result.allowCleartextAuthentication {
            throw ConfigurationError(
                key: "listen.pop3",
                "a plaintext listener without tls.certificate offers no STLS and no login; configure TLS or set auth.allow_cleartext"
            )
        }
        var limits = ServerLimits()
        limits.commandLineLength = try int("limits.command_line_length", 64...65_536, default: limits.commandLineLength)
        limits.saslLineLength = try int("limits.sasl_line_length", 256...1_048_576, default: limits.saslLineLength)
        limits.badCommandsBeforeLogin = try int("limits.bad_commands_before_login", 1...1_000, default: limits.badCommandsBeforeLogin)
        limits.badCommandsAfterLogin = try int("limits.bad_commands_after_login", 1...10_000, default: limits.badCommandsAfterLogin)
        limits.preAuthenticationTimeout = try seconds("limits.pre_auth_timeout", 1...3_600, default: limits.preAuthenticationTimeout)
        // RFC 1939 §3: the autologout timer MUST be at least 10 minutes.
        limits.idleTimeout = try seconds("limits.idle_timeout", 600...86_400, default: limits.idleTimeout)
        limits.handshakeTimeout = try seconds("limits.handshake_timeout", 1...600, default: limits.handshakeTimeout)
        limits.connectionsPerAddress = try int("limits.connections_per_address", 1...1_000_000, default: limits.connectionsPerAddress)
        limits.connections = try int("limits.connections", 1...10_000_000, default: limits.connections)
        limits.shutdownGracePeriod = try seconds("limits.shutdown_grace", 0...3_600, default: limits.shutdownGracePeriod)
        limits.indexCacheMessages = try int("limits.index_cache_messages", 0...100_000_000, default: limits.indexCacheMessages)
        limits.maildropMessages = try int("limits.maildrop_messages", 1...100_000_000, default: limits.maildropMessages)
        limits.messageSize = try int("limits.message_size", 1_024...Int(Int32.max), default: limits.messageSize)
        result.limits = limits
        var lmtp = result.lmtp
        if let mode = config.string(forKey: "lmtp.socket_mode") {
            guard mode.count <= 4, let value = UInt32(mode, radix: 8), value <= 0o777 else {
                throw ConfigurationError(key: "lmtp.socket_mode", "expected an octal mode such as \"0660\", got \"\(mode)\"")
            }
            lmtp.socketMode = value
        }
        lmtp.trustedNetworks = try networks("lmtp.trusted_networks")
        if let delimiter = config.string(forKey: "lmtp.recipient_delimiter") {
            guard delimiter.count <= 1, !delimiter.contains("@") else {
                throw ConfigurationError(key: "lmtp.recipient_delimiter", "expected one character (e.g. \"+\") or \"\"")
            }
            lmtp.recipientDelimiter = delimiter
        }
        lmtp.domains = (config.stringArray(forKey: "lmtp.domains") ?? config.string(forKey: "lmtp.domains").map { [$0] } ?? [])
            .map { $0.lowercased() }.filter { !$0.isEmpty }
        lmtp.quotaFullTempfail = try bool("lmtp.quota_full_tempfail", default: false)
        lmtp.maximumRecipients = try int("lmtp.max_recipients", 100...100_000, default: lmtp.maximumRecipients)
        lmtp.idleTimeout = try seconds("lmtp.idle_timeout", 5...3_600, default: lmtp.idleTimeout)
        lmtp.maximumConnections = try int("lmtp.max_connections", 1...100_000, default: lmtp.maximumConnections)
        lmtp.maximumBadCommands = try int("lmtp.max_bad_commands", 1...1_000, default: lmtp.maximumBadCommands)
        lmtp.hostname = config.string(forKey: "lmtp.hostname").flatMap { $0.isEmpty ? nil : $0 }
        if let name = lmtp.hostname, !name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) {
            throw ConfigurationError(key: "lmtp.hostname", "expected a host name without spaces or control characters")
        }
        result.lmtp = lmtp
        result.policy.loginDelaySeconds = try int("policy.login_delay", 0...86_400, default: 0)
        result.policy.utf8 = try bool("policy.utf8", default: true)
        if let text = config.string(forKey: "policy.expire_days") {
            if text.lowercased() == "never" {
                result.policy.expireDays = nil
            } else {
                result.policy.expireDays = try int("policy.expire_days", 0...36_500, default: 0)
            }
        }
        result.stateFolder = resolve(config.string(forKey: "state_dir") ?? "state")
        let level = config.string(forKey: "log.level") ?? "info"
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(level) else {
            throw ConfigurationError(key: "log.level", "expected trace, debug, info, notice, warning, error or critical")
        }
        result.logLevel = level
        if let text = config.string(forKey: "log.format") {
            guard let format = LogFormat(rawValue: text) else {
                throw ConfigurationError(key: "log.format", "expected text or json, got \"\(text)\"")
            }
            result.logFormat = format
        }
        if let text = config.string(forKey: "control.socket") {
            result.controlSocket = text.isEmpty ? nil : resolve(text)
        } else {
            result.controlSocket = resolve("run/pop3d.sock")
            result.controlSocketIsDefault = true
        }
        if let text = config.string(forKey: "autoconfig.listen"), !text.isEmpty {
            guard let address = ListenAddress(parsing: text) else {
                throw ConfigurationError(key: "autoconfig.listen", "expected HOST:PORT or [IPv6]:PORT, got \"\(text)\"")
            }
            guard result.tlsConfigured else {
                throw ConfigurationError(key: "autoconfig.listen", "needs tls.certificate and tls.key (it is served over HTTPS)")
            }
            result.autoconfigListener = address
        }
        if let text = config.string(forKey: "autoconfig.hostname"), !text.isEmpty {
            guard text.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) else {
                throw ConfigurationError(key: "autoconfig.hostname", "expected a host name, got \"\(text)\"")
            }
            result.autoconfigHostname = text.lowercased()
        }
        if let text = config.string(forKey: "metrics.listen"), !text.isEmpty {
            guard let address = ListenAddress(parsing: text) else {
                throw ConfigurationError(key: "metrics.listen", "expected HOST:PORT or [IPv6]:PORT, got \"\(text)\"")
            }
            result.metricsListener = address
        }
        result.user = config.string(forKey: "user")
        result.group = config.string(forKey: "group")
        result.firstValidUID = UInt32(try int("first_valid_uid", 1...Int(Int32.max), default: Int(result.firstValidUID)))
        return result
    }

    /// Why `tls.ticket_lifetime` cannot be set, and what holds instead.
    static let ticketLifetimeUnsupported = """
        not supported by this build: swift-nio-ssl 2.37 has no session-ticket settings, so BoringSSL's defaults \
        apply: TLS 1.3 tickets resume for up to 48 hours (TLS 1.2 sessions 2 hours), the ticket keys are made in \
        each pop3d process and rotated every 48 hours, and no node shares them; remove the key
        """

    /// The effective configuration as YAML, for `pop3d check-config`. Holds no secrets (passwords live in the
    /// passwd-file, keys in their PEM files; only paths are shown). It loads again as it is: keys that do not apply
    /// (the `storage.postgres` block with the maildir backend, an unset path) are printed as `null`, which reads as
    /// unset.
    public var renderedYAML: String {
        func list(_ addresses: [ListenAddress]) -> String {
            addresses.isEmpty ? "[]" : "[" + addresses.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        }
        return """
            listen:
              pop3s: \(list(self.pop3sListeners))
              pop3: \(list(self.pop3Listeners))
              lmtp: [\(self.lmtp.listeners.map { "\"\($0)\"" }.joined(separator: ", "))]
            tls:
              certificate: \(self.certificatePath.map { "\"\($0)\"" } ?? "null")
              key: \(self.privateKeyPath.map { "\"\($0)\"" } ?? "null")
              strict_sni: \(self.strictSNI)
              ticket_lifetime: null
            passwd_file: \(self.usesPasswdFile ? "\"\(self.passwdFile)\"" : "null")
            state_dir: "\(self.stateFolder)"
            maildir: "\(self.maildirTemplate)"
            storage:
              backend: \(self.storageBackend.rawValue)
              postgres:
                url: \(self.postgres.map { "\"\($0.url)\"" } ?? "null")
                password_file: \(self.postgres?.passwordFile.map { "\"\($0)\"" } ?? "null")
                pool_size: \(self.postgres.map { String($0.poolSize) } ?? "null")
                tls: \(self.postgres?.tls.rawValue ?? "null")
                ca_file: \(self.postgres?.caFile.map { "\"\($0)\"" } ?? "null")
                statement_timeout: \(self.postgres.map { String($0.statementTimeout.components.seconds) } ?? "null")
                pool_timeout: \(self.postgres.map { String($0.poolTimeout.components.seconds) } ?? "null")
                allow_async_commit: \(self.postgres.map { String($0.allowAsyncCommit) } ?? "null")
            auth:
              allow_cleartext: \(self.allowCleartextAuthentication)
              failure_delay: \(self.authenticationFailureDelay.components.seconds)
              mechanisms: [\(self.saslMechanisms.map { "\"\($0)\"" }.joined(separator: ", "))]
              scram_iterations: \(self.scramIterations)
              oauth2:
                jwks: \(self.oauth2.map { "\"\($0.jwksPath)\"" } ?? "null")
                issuer: \(self.oauth2.map { "\"\($0.issuer)\"" } ?? "null")
                audience: \(self.oauth2.map { "\"\($0.audience)\"" } ?? "null")
                username_claim: \(self.oauth2.map { "\"\($0.usernameClaim)\"" } ?? "null")
                introspection_url: \(self.oauth2?.introspection.map { "\"\($0.url)\"" } ?? "null")
                client_credentials_file: \(self.oauth2?.introspection.map { "\"\($0.credentialsFile)\"" } ?? "null")
                clock_skew: \(self.oauth2.map { String($0.clockSkew) } ?? "null")
            trusted_networks: [\(self.trustedNetworks.map { "\"\($0)\"" }.joined(separator: ", "))]
            proxy:
              trusted_networks: [\(self.proxyNetworks.map { "\"\($0)\"" }.joined(separator: ", "))]
            limits:
              command_line_length: \(self.limits.commandLineLength)
              sasl_line_length: \(self.limits.saslLineLength)
              bad_commands_before_login: \(self.limits.badCommandsBeforeLogin)
              bad_commands_after_login: \(self.limits.badCommandsAfterLogin)
              pre_auth_timeout: \(self.limits.preAuthenticationTimeout.components.seconds)
              idle_timeout: \(self.limits.idleTimeout.components.seconds)
              handshake_timeout: \(self.limits.handshakeTimeout.components.seconds)
              connections_per_address: \(self.limits.connectionsPerAddress)
              connections: \(self.limits.connections)
              shutdown_grace: \(self.limits.shutdownGracePeriod.components.seconds)
              index_cache_messages: \(self.limits.indexCacheMessages)
              maildrop_messages: \(self.limits.maildropMessages)
              message_size: \(self.limits.messageSize)
            lmtp:
              socket_mode: "0\(String(self.lmtp.socketMode, radix: 8))"
              trusted_networks: [\(self.lmtp.trustedNetworks.map { "\"\($0)\"" }.joined(separator: ", "))]
              recipient_delimiter: "\(self.lmtp.recipientDelimiter)"
              domains: [\(self.lmtp.domains.map { "\"\($0)\"" }.joined(separator: ", "))]
              quota_full_tempfail: \(self.lmtp.quotaFullTempfail)
              max_recipients: \(self.lmtp.maximumRecipients)
              idle_timeout: \(self.lmtp.idleTimeout.components.seconds)
              max_connections: \(self.lmtp.maximumConnections)
              max_bad_commands: \(self.lmtp.maximumBadCommands)
              hostname: \(self.lmtp.hostname.map { "\"\($0)\"" } ?? "null")
            policy:
              login_delay: \(self.policy.loginDelaySeconds)
              utf8: \(self.policy.utf8)
              expire_days: \(self.policy.expireDays.map(String.init) ?? "never")
            log:
              level: \(self.logLevel)
              format: \(self.logFormat.rawValue)
            metrics:
              listen: \(self.metricsListener.map { "\"\($0)\"" } ?? "null")
            control:
              socket: \(self.controlSocket.map { "\"\($0)\"" } ?? "null")
            autoconfig:
              listen: \(self.autoconfigListener.map { "\"\($0)\"" } ?? "null")
              hostname: \(self.autoconfigHostname.map { "\"\($0)\"" } ?? "null")
            user: \(self.user ?? "null")
            group: \(self.group ?? "null")
            first_valid_uid: \(self.firstValidUID)

            """
    }
}

extension ServerConfiguration {
    static func parsePostgres(
        _ config: NullAwareReader,
        resolve: (String) -> String,
        int: (String, ClosedRange<Int>, Int) throws -> Int,
        bool: (String, Bool) throws -> Bool
    ) throws -> PostgresSettings {
        guard let url = config.string(forKey: "storage.postgres.url"), !url.isEmpty else {
            throw ConfigurationError(key: "storage.postgres.url", "required with storage.backend: postgres, e.g. \"postgresql://pop3d@127.0.0.1:5432/pop3\"")
        }
        var settings: PostgresSettings
        switch Result(catching: { () throws(PostgresSettings.ParseError) in try PostgresSettings(url: url) }) {
        case .success(let parsed): settings = parsed
        case .failure(let error): throw ConfigurationError(key: "storage.postgres.url", error.description)
        }
        settings.passwordFile = config.string(forKey: "storage.postgres.password_file").map(resolve)
        settings.poolSize = try int("storage.postgres.pool_size", 1...1000, PostgresSettings.defaultPoolSize)
        let tlsText = config.string(forKey: "storage.postgres.tls") ?? "prefer"
        guard let tls = PostgresSettings.TLSMode(rawValue: tlsText) else {
            throw ConfigurationError(key: "storage.postgres.tls", "expected disable, prefer, require or verify-full, got \"\(tlsText)\"")
        }
        settings.tls = tls
        settings.caFile = config.string(forKey: "storage.postgres.ca_file").map(resolve)
        if tls == .verifyFull && settings.caFile == nil {
            throw ConfigurationError(key: "storage.postgres.ca_file", "required with storage.postgres.tls: verify-full")
        }
        settings.statementTimeout = .seconds(try int("storage.postgres.statement_timeout", 1...3600, Int(PostgresSettings.defaultStatementTimeout.components.seconds)))
        settings.poolTimeout = .seconds(try int("storage.postgres.pool_timeout", 1...600, Int(PostgresSettings.defaultPoolTimeout.components.seconds)))
        settings.allowAsyncCommit = try bool("storage.postgres.allow_async_commit", false)
        return settings
    }

    /// The database password: the first line of `storage.postgres.password_file` (mode 0600 or stricter), or nil
    /// when none is configured (peer or trust authentication, a Unix socket).
    public static func readDatabasePassword(_ settings: PostgresSettings) throws -> String? {
        guard let path = settings.passwordFile else { return nil }
        return try Self.readSecretLine(path, key: "storage.postgres.password_file")
    }

    /// The first line of a file only its owner may read (mode 0600 or stricter).
    static func readSecretLine(_ path: String, key: String) throws -> String {
        let contents: (bytes: [UInt8], status: stat)
        switch Result(catching: { () throws(FileSystemError) in try FileSystem.readFileAndStatus(path) }) {
        case .success(let read): contents = read
        case .failure(let error): throw ConfigurationError(key: key, "cannot read \(path): \(error.reason)")
        }
        guard contents.status.st_mode & 0o077 == 0 else {
            throw ConfigurationError(key: key, "\(path) is readable by others (mode 0\(String(contents.status.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        let line = String(decoding: contents.bytes.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        return line.hasSuffix("\r") ? String(line.dropLast()) : line
    }

    /// `CLIENT_ID:CLIENT_SECRET` from the first line of a file only its owner may read (mode 0600 or stricter).
    static func readClientCredentials(_ path: String) throws -> (String, String) {
        let key = "auth.oauth2.client_credentials_file"
        let line = try Self.readSecretLine(path, key: key).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let colon = line.firstIndex(of: ":"), colon != line.startIndex, line.index(after: colon) != line.endIndex else {
            throw ConfigurationError(key: key, "\(path): expected one line CLIENT_ID:CLIENT_SECRET")
        }
        return (String(line[..<colon]), String(line[line.index(after: colon)...]))
    }
}

/// The configuration as `parse` reads it: a YAML null (`key: null` or `key: ~`, as `check-config` prints an unset
/// key) is an unset key. The YAML provider hands a null over as its text, so without this `check-config`'s own
/// output would not load again (`storage.postgres.url: null` read as the URL "null").
struct NullAwareReader {
    let reader: ConfigReader

    func string(forKey key: ConfigKey) -> String? {
        guard let text = reader.string(forKey: key), text != "null", text != "~" else { return nil }
        return text
    }

    func stringArray(forKey key: ConfigKey) -> [String]? {
        reader.stringArray(forKey: key)
    }
}
