import Foundation
import POP3Client
import SystemIO
import Yams

/// One account of the accounts file, validated.
public struct AccountConfiguration: Sendable, Equatable {
    public var name: String
    public var url: POP3URL
    public var passwordSource: PasswordSource
    public var trust: TrustPolicy
    public var starttls: Bool
    public var insecurePlaintext: Bool
    public var destination: LocalDestination
    public var keep: Bool
    public var keepDays: Int?
    /// Messages larger than this (octets, as LIST reports) are skipped.
    public var maxSize: Int?
    /// `auth:` (or the URL's `;AUTH=`); `auto` by default.
    public var authentication: AuthenticationMethod
    /// `provider:` and the `oauth2_*` keys: tokens from `pop3 oauth2 login`.
    public var oauth2: OAuth2Provider?
    /// `interval:` seconds between polls of `pop3 fetch --daemon` (nil: the daemon's).
    public var interval: Int?

    public init(
        name: String,
        url: POP3URL,
        passwordSource: PasswordSource = .prompt,
        trust: TrustPolicy = .system,
        starttls: Bool = false,
        insecurePlaintext: Bool = false,
        destination: LocalDestination,
        keep: Bool = false,
        keepDays: Int? = nil,
        maxSize: Int? = nil,
        authentication: AuthenticationMethod = .auto,
        oauth2: OAuth2Provider? = nil,
        interval: Int? = nil
    ) {
        self.interval = interval
        self.authentication = authentication
        self.oauth2 = oauth2
        self.name = name
        self.url = url
        self.passwordSource = passwordSource
        self.trust = trust
        self.starttls = starttls
        self.insecurePlaintext = insecurePlaintext
        self.destination = destination
        self.keep = keep
        self.keepDays = keepDays
        self.maxSize = maxSize
    }

    public var accountKey: AccountKey { url.accountKey }

    /// keep + keep_days: keep_days wins.
    public var retention: RetentionPolicy { RetentionPolicy(keep: keep, keepDays: keepDays) }
}

/// An error in the accounts file, naming the account and the key.
public struct AccountsFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var account: String?
    public var key: String?
    public var reason: String

    public init(path: String, account: String? = nil, key: String? = nil, reason: String) {
        self.path = path
        self.account = account
        self.key = key
        self.reason = reason
    }

    public var description: String {
        var text = path
        if let account { text += ": account '\(account)'" }
        if let key { text += (account == nil ? ": " : ", ") + "key '\(key)'" }
        return text + ": " + reason
    }
}

/// The accounts file (YAML), by default `$XDG_CONFIG_HOME/pop3/accounts.yaml` (`~/.config/pop3/accounts.yaml`):
///
/// ```yaml
/// accounts:
///   work:                                            # account name
///     url: pop3s://alice%40corp@mail.example.com     # pop3s:// or pop3:// (then starttls or insecure_plaintext)
///     password_file: ~/.config/pop3/work.pass        # mode 0600 or stricter, owned by you
///     # password_command: "pass show mail/work"      # or: first line of its stdout; neither: prompt on the tty
///     # ca_file: /path/ca.pem                        # or pin: "sha256:HEX"; neither: the system trust store
///     maildir: ~/Mail/work                           # exactly one of maildir / mbox / mda
///     keep: false                                    # leave messages on the server
///     keep_days: 30                                  # delete N days after first seen (wins over keep)
///     max_size: 10485760                             # skip larger messages
/// ```
///
/// Unknown keys are errors (a typo must not silently change behaviour). A leading `~` is expanded in paths.
public enum AccountsFile {
    static let keys: Set<String> = [
        "url", "password_file", "password_command", "ca_file", "pin", "starttls", "insecure_plaintext",
        "maildir", "mbox", "mda", "keep", "keep_days", "max_size", "auth", "oauth2_token_command",
        "provider", "oauth2_client_id", "oauth2_client_secret_file", "oauth2_tenant", "oauth2_token_endpoint",
        "oauth2_device_endpoint", "oauth2_authorization_endpoint", "oauth2_scope", "interval", "lmtp", "smtp", "recipient",
    ]

    /// Seconds between polls of `pop3 fetch --daemon`: at least 10, at most a day.
    public static let intervalRange = 10...86_400

    public static func defaultPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let config = environment["XDG_CONFIG_HOME"], config.hasPrefix("/") {
            return FileSystem.join(config, "pop3/accounts.yaml")
        }
        return FileSystem.join(StatePaths.homeDirectory(environment: environment), ".config/pop3/accounts.yaml")
    }

    /// `daemon: {interval: SECONDS}`: the poll interval of `pop3 fetch --daemon 0` for accounts without their own.
    public static func daemonInterval(yaml text: String, path: String) throws -> Int? {
        guard case .mapping(let top)? = try? Yams.compose(yaml: text) else { return nil }
        return try Self.daemonInterval(top: top, path: path)
    }

    static func daemonInterval(top: Node.Mapping, path: String) throws -> Int? {
        guard let node = top["daemon"] else { return nil }
        guard case .mapping(let daemon) = node else {
            throw AccountsFileError(path: path, key: "daemon", reason: "expected a mapping with the key 'interval'")
        }
        var interval: Int?
        for (key, value) in daemon {
            guard key.string == "interval" else {
                throw AccountsFileError(path: path, key: "daemon.\(key.string ?? "?")", reason: "unknown key (expected 'interval')")
            }
            guard let seconds = value.string.flatMap({ Int($0) }), Self.intervalRange.contains(seconds) else {
                throw AccountsFileError(path: path, key: "daemon.interval", reason: "expected seconds from \(Self.intervalRange.lowerBound) to \(Self.intervalRange.upperBound)")
            }
            interval = seconds
        }
        return interval
    }

    /// All accounts, in file order.
    public static func load(
        path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> [AccountConfiguration] {
        let bytes: [UInt8]?
        do {
            bytes = try FileSystem.readFile(path, limit: 1 << 20)
        } catch {
            throw AccountsFileError(path: path, reason: "cannot read: \(error)")
        }
        guard let bytes else { throw AccountsFileError(path: path, reason: "no such file") }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw AccountsFileError(path: path, reason: "not UTF-8")
        }
        return try parse(yaml: text, path: path, environment: environment)
    }

    /// Parses accounts-file text; `path` is used in errors only.
    public static func parse(
        yaml text: String,
        path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> [AccountConfiguration] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw AccountsFileError(path: path, reason: "YAML syntax: \(error)")
        }
        guard let root, case .mapping(let top) = root else {
            throw AccountsFileError(path: path, reason: "expected a mapping with the key 'accounts'")
        }
        for (key, _) in top where key.string != "accounts" && key.string != "daemon" {
            throw AccountsFileError(path: path, key: key.string ?? "?", reason: "unknown key (expected 'accounts' or 'daemon')")
        }
        _ = try Self.daemonInterval(top: top, path: path)
        guard let accountsNode = top["accounts"], case .mapping(let accounts) = accountsNode else {
            throw AccountsFileError(path: path, key: "accounts", reason: "expected a mapping of account names")
        }
        guard !accounts.isEmpty else { throw AccountsFileError(path: path, key: "accounts", reason: "no accounts") }
        var result: [AccountConfiguration] = []
        var names = Set<String>()
        for (nameNode, body) in accounts {
            guard case .scalar(let scalar) = nameNode, !scalar.string.isEmpty else {
                throw AccountsFileError(path: path, key: "accounts", reason: "account names must be strings")
            }
            let name = scalar.string
            guard names.insert(name).inserted else {
                throw AccountsFileError(path: path, account: name, reason: "defined twice")
            }
            var reader = AccountReader(path: path, account: name, environment: environment)
            result.append(try reader.read(body))
        }
        return result
    }
}

private struct AccountReader {
    let path: String
    let account: String
    let environment: [String: String]
    var values: [String: Node] = [:]

    init(path: String, account: String, environment: [String: String]) {
        self.path = path
        self.account = account
        self.environment = environment
    }

    func error(_ key: String?, _ reason: String) -> AccountsFileError {
        AccountsFileError(path: path, account: account, key: key, reason: reason)
    }

    mutating func read(_ body: Node) throws -> AccountConfiguration {
        guard case .mapping(let mapping) = body else { throw error(nil, "expected a mapping of settings") }
        for (keyNode, value) in mapping {
            guard case .scalar(let scalar) = keyNode else { throw error(nil, "setting names must be strings") }
            let key = scalar.string
            guard AccountsFile.keys.contains(key) else {
                if key == "password" {
                    throw error(key, "passwords are not stored in this file; use password_file or password_command")
                }
                throw error(key, "unknown key")
            }
            guard values[key] == nil else { throw error(key, "given twice") }
            values[key] = value
        }

        guard let urlText = try string("url") else { throw error("url", "required") }
        let url: POP3URL
        do {
            url = try POP3URL.parse(urlText)
        } catch let parseError as POP3URL.ParseError {
            throw error("url", parseError.reason)
        }

        let starttls = try bool("starttls") ?? false
        let insecurePlaintext = try bool("insecure_plaintext") ?? false
        switch url.scheme {
        case .pop3s:
            if starttls { throw error("starttls", "applies to pop3:// URLs only; pop3s:// is TLS from the start") }
            if insecurePlaintext { throw error("insecure_plaintext", "applies to pop3:// URLs only") }
        case .pop3:
            if starttls && insecurePlaintext {
                throw error("insecure_plaintext", "contradicts starttls: true")
            }
            if !starttls && !insecurePlaintext {
                throw error("url", "pop3:// needs starttls: true (or, knowingly, insecure_plaintext: true)")
            }
        }

        let passwordSource: PasswordSource
        let provider = try self.provider()
        let tokenCommand = try string("oauth2_token_command")
        if provider != nil {
            for key in ["password_file", "password_command", "oauth2_token_command"] where values[key] != nil {
                throw error(key, "an account with provider: gets its tokens from pop3 oauth2 login; drop \(key)")
            }
        }
        switch (try string("password_file"), try string("password_command")) {
        case (.some, .some):
            throw error("password_command", "give either password_file or password_command, not both")
        case (.some, _) where tokenCommand != nil, (_, .some) where tokenCommand != nil:
            throw error("oauth2_token_command", "an OAuth account has a token, not a password: drop password_file/password_command")
        case (nil, nil) where tokenCommand != nil:
            guard !tokenCommand!.trimmingSpaces.isEmpty else { throw error("oauth2_token_command", "empty command") }
            passwordSource = .command(tokenCommand!)
        case (.some(let file), nil):
            let expanded = StatePaths.expandTilde(file, environment: environment)
            do {
                try PasswordSource.checkFilePermissions(expanded)
            } catch let passwordError as PasswordError {
                throw error("password_file", passwordError.description)
            }
            passwordSource = .file(expanded)
        case (nil, .some(let command)):
            guard !command.trimmingSpaces.isEmpty else { throw error("password_command", "empty command") }
            passwordSource = .command(command)
        case (nil, nil):
            passwordSource = .prompt
        }

        let trust: TrustPolicy
        switch (try string("ca_file"), try string("pin")) {
        case (.some, .some):
            throw error("pin", "give either ca_file or pin, not both")
        case (.some(let file), nil):
            let expanded = StatePaths.expandTilde(file, environment: environment)
            guard (try? FileSystem.status(expanded)) != nil else { throw error("ca_file", "\(expanded) does not exist") }
            trust = .caFile(expanded)
        case (nil, .some(let pin)):
            guard let parsed = TrustPolicy.pin(parsing: pin) else {
                throw error("pin", "expected sha256: followed by 64 hex digits (colons allowed)")
            }
            trust = parsed
        case (nil, nil):
            trust = .system
        }

        var destinations: [LocalDestination] = []
        if let maildir = try string("maildir") {
            destinations.append(.maildir(StatePaths.expandTilde(maildir, environment: environment)))
        }
        if let mbox = try string("mbox") {
            destinations.append(.mbox(StatePaths.expandTilde(mbox, environment: environment)))
        }
        if let mda = try string("mda") {
            guard !mda.trimmingSpaces.isEmpty else { throw error("mda", "empty command") }
            destinations.append(.mda(mda))
        }
        let recipient = try string("recipient")
        for kind in [MTATarget.Kind.lmtp, .smtp] {
            guard let text = try string(kind.rawValue) else { continue }
            switch MTATarget.parse(kind: kind, text, recipient: recipient ?? LocalDestination.defaultRecipient()) {
            case .success(let target): destinations.append(.mta(target))
            case .failure(let problem): throw error(kind.rawValue, problem.description)
            }
        }
        if recipient != nil && !destinations.contains(where: { if case .mta = $0 { true } else { false } }) {
            throw error("recipient", "goes with lmtp: or smtp:")
        }
        guard destinations.count == 1 else {
            throw error(
                "maildir",
                destinations.isEmpty
                    ? "one of maildir, mbox, mda, lmtp or smtp is required"
                    : "give exactly one of maildir, mbox, mda, lmtp or smtp")
        }

        let keepDays = try int("keep_days")
        if let keepDays, keepDays < 0 { throw error("keep_days", "must be 0 or more") }
        let maxSize = try int("max_size")
        if let maxSize, maxSize <= 0 { throw error("max_size", "must be a positive number of octets") }
        let interval = try int("interval")
        if let interval, !AccountsFile.intervalRange.contains(interval) {
            throw error("interval", "seconds between polls, from \(AccountsFile.intervalRange.lowerBound) to \(AccountsFile.intervalRange.upperBound)")
        }

        return AccountConfiguration(
            name: account,
            url: url,
            passwordSource: passwordSource,
            trust: trust,
            starttls: starttls,
            insecurePlaintext: insecurePlaintext,
            destination: destinations[0],
            keep: try bool("keep") ?? false,
            keepDays: keepDays,
            maxSize: maxSize,
            authentication: try self.checkedAuthentication(url: url, tokenCommand: tokenCommand != nil, provider: provider),
            oauth2: provider,
            interval: interval
        )
    }

    /// `provider: microsoft | google | custom` with its `oauth2_*` keys; nil without `provider:`.
    private func provider() throws -> OAuth2Provider? {
        let oauthKeys = ["oauth2_client_id", "oauth2_client_secret_file", "oauth2_tenant", "oauth2_token_endpoint",
                         "oauth2_device_endpoint", "oauth2_authorization_endpoint", "oauth2_scope"]
        guard let name = try string("provider") else {
            if let key = oauthKeys.first(where: { values[$0] != nil }) { throw error(key, "needs provider: microsoft, google or custom") }
            return nil
        }
        guard let clientID = try string("oauth2_client_id"), !clientID.isEmpty else {
            throw error("oauth2_client_id", "required with provider: (the client id of an application registered with the provider)")
        }
        var secret: String?
        if let file = try string("oauth2_client_secret_file") {
            let expanded = StatePaths.expandTilde(file, environment: environment)
            do {
                secret = try PasswordSource.file(expanded).readPassword()
            } catch let problem {
                throw error("oauth2_client_secret_file", "\(problem)")
            }
        }
        func endpoint(_ key: String) throws -> String? {
            guard let url = try string(key) else { return nil }
            if let problem = OAuth2Provider.checkEndpoint(url) { throw error(key, problem) }
            return url
        }
        var provider: OAuth2Provider
        switch name {
        case "microsoft":
            provider = .microsoft(clientID: clientID, clientSecret: secret, tenant: try string("oauth2_tenant") ?? "common")
        case "google":
            provider = .google(clientID: clientID, clientSecret: secret)
        case "custom":
            guard let token = try endpoint("oauth2_token_endpoint") else {
                throw error("oauth2_token_endpoint", "required with provider: custom")
            }
            let device = try endpoint("oauth2_device_endpoint")
            let authorization = try endpoint("oauth2_authorization_endpoint")
            guard device != nil || authorization != nil else {
                throw error("oauth2_device_endpoint", "provider: custom needs oauth2_device_endpoint or oauth2_authorization_endpoint")
            }
            provider = OAuth2Provider(
                name: "custom", tokenEndpoint: token, deviceEndpoint: device, authorizationEndpoint: authorization,
                scope: try string("oauth2_scope") ?? "", clientID: clientID, clientSecret: secret,
                flow: device != nil ? .device : .authorizationCode
            )
        default:
            throw error("provider", "unknown provider \"\(name)\"; one of microsoft, google, custom")
        }
        if name != "custom" {
            for key in ["oauth2_token_endpoint", "oauth2_device_endpoint", "oauth2_authorization_endpoint"] where values[key] != nil {
                throw error(key, "only with provider: custom (\(name)'s endpoints are built in)")
            }
            if let scope = try string("oauth2_scope") { provider.scope = scope }
        }
        if name != "microsoft", values["oauth2_tenant"] != nil { throw error("oauth2_tenant", "only with provider: microsoft") }
        return provider
    }

    /// An OAuth method needs a token source; a token source needs an OAuth method.
    private func checkedAuthentication(url: POP3URL, tokenCommand: Bool, provider: OAuth2Provider?) throws -> AuthenticationMethod {
        if let provider {
            guard values["auth"] != nil || url.authMechanism != nil else { return provider.defaultMechanism }
            let method = try self.authentication(url: url)
            guard method.usesBearerToken else { throw error("auth", "an account with provider: logs in with oauthbearer or xoauth2") }
            return method
        }
        let method = try self.authentication(url: url)
        if tokenCommand && !method.usesBearerToken {
            throw error("oauth2_token_command", "goes with auth: oauthbearer or auth: xoauth2")
        }
        if method.usesBearerToken && !tokenCommand {
            throw error("auth", "\(method) needs provider: (tokens from pop3 oauth2 login) or oauth2_token_command")
        }
        return method
    }

    /// `auth:` wins over the URL's `;AUTH=`; neither means auto.
    private func authentication(url: POP3URL) throws -> AuthenticationMethod {
        if let text = try string("auth") {
            guard let method = AuthenticationMethod(parsing: text) else {
                throw error("auth", "unknown method \"\(text)\"; one of \(AuthenticationMethod.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return method
        }
        switch Result(catching: { () throws(POP3URL.ParseError) in try url.authentication() }) {
        case .success(let method): return method
        case .failure(let parseError): throw error("url", parseError.reason)
        }
    }

    private func scalar(_ key: String) throws -> Node.Scalar? {
        guard let node = values[key] else { return nil }
        guard case .scalar(let scalar) = node else { throw error(key, "expected a single value") }
        return scalar
    }

    func string(_ key: String) throws -> String? {
        guard let scalar = try scalar(key) else { return nil }
        let isNull = scalar.style == .plain && ["~", "null", "Null", "NULL"].contains(scalar.string)
        guard !scalar.string.isEmpty, !isNull else { throw error(key, "empty value") }
        return scalar.string
    }

    func bool(_ key: String) throws -> Bool? {
        guard let scalar = try scalar(key) else { return nil }
        switch scalar.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(key, "expected true or false")
        }
    }

    func int(_ key: String) throws -> Int? {
        guard let scalar = try scalar(key) else { return nil }
        let text = scalar.string.replacingOccurrences(of: "_", with: "")
        guard let value = Int(text) else { throw error(key, "expected a whole number") }
        return value
    }
}
