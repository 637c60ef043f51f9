import Yams

/// The keys of the server's configuration file, and the check that refuses any other key, in the YAML file and in
/// `POP3D_*` environment variables alike: a misspelt `limits.idle_timout` or `auth.allow_cleartxt` must not run
/// on the defaults in silence.
public enum ConfigurationKeys {
    /// Every key `ServerConfiguration.parse` reads. `renderedYAML` prints each of them (a test holds the two
    /// together), so `pop3d check-config` shows them all.
    public static let all: [String] = [
        "listen.pop3s", "listen.pop3", "listen.lmtp",
        "tls.certificate", "tls.key", "tls.strict_sni", "tls.ticket_lifetime",
        "passwd_file", "maildir",
        "storage.backend", "storage.postgres.url", "storage.postgres.password_file", "storage.postgres.pool_size",
        "storage.postgres.tls", "storage.postgres.ca_file", "storage.postgres.statement_timeout",
        "storage.postgres.pool_timeout", "storage.postgres.allow_async_commit",
        "auth.allow_cleartext", "auth.failure_delay", "auth.mechanisms", "auth.scram_iterations",
        "auth.oauth2.jwks", "auth.oauth2.issuer", "auth.oauth2.audience", "auth.oauth2.username_claim",
        "auth.oauth2.introspection_url", "auth.oauth2.client_credentials_file", "auth.oauth2.clock_skew",
        "trusted_networks", "proxy.trusted_networks",
        "user", "group", "first_valid_uid",
        "limits.command_line_length", "limits.sasl_line_length",
        "limits.bad_commands_before_login", "limits.bad_commands_after_login",
        "limits.pre_auth_timeout", "limits.idle_timeout", "limits.handshake_timeout",
        "limits.connections_per_address", "limits.connections", "limits.shutdown_grace",
        "limits.index_cache_messages", "limits.maildrop_messages", "limits.message_size",
        "lmtp.socket_mode", "lmtp.trusted_networks", "lmtp.recipient_delimiter", "lmtp.domains",
        "lmtp.quota_full_tempfail", "lmtp.max_recipients", "lmtp.idle_timeout", "lmtp.max_connections",
        "lmtp.max_bad_commands", "lmtp.hostname",
        "policy.login_delay", "policy.utf8", "policy.expire_days", "state_dir",
        "log.level", "log.format", "metrics.listen", "control.socket", "autoconfig.listen", "autoconfig.hostname",
    ]

    /// The environment variable that overrides `key`: `limits.idle_timeout` → `POP3D_LIMITS_IDLE_TIMEOUT`.
    public static func environmentName(_ key: String) -> String {
        ServerConfiguration.environmentPrefix + key.uppercased().replacingOccurrences(of: ".", with: "_")
    }

    /// Throws for the first key in `yaml` or `environment` that is not a configuration key, naming it and, when
    /// one is close, the key it probably meant.
    public static func check(yaml: String, environment: [String: String]) throws {
        let known = Set(Self.all)
        let prefixes = Set(Self.all.flatMap { key in
            let parts = key.split(separator: ".")
            return (1..<max(parts.count, 1)).map { parts[..<$0].joined(separator: ".") }
        })
        for (key, isNull) in try Self.leaves(ofYAML: yaml) where !known.contains(key) {
            if prefixes.contains(key) {
                if isNull { continue }  // `listen:` with nothing under it
                let children = Self.all.filter { $0.hasPrefix(key + ".") }
                throw ConfigurationError(key: key, "expected a mapping with \(children.joined(separator: ", "))")
            }
            throw ConfigurationError(key: key, "unknown key" + Self.hint(Self.closest(to: key, among: Self.all)))
        }
        let names = Dictionary(uniqueKeysWithValues: Self.all.map { (Self.environmentName($0), $0) })
        for name in environment.keys.sorted() where name.hasPrefix(ServerConfiguration.environmentPrefix) && names[name] == nil {
            let suggestion = Self.closest(to: name, among: names.keys).map { "\($0) (\(names[$0]!))" }
            throw ConfigurationError(key: name, "unknown environment variable" + Self.hint(suggestion))
        }
    }

    private static func hint(_ suggestion: String?) -> String {
        suggestion.map { "; did you mean \($0)?" } ?? ""
    }

    /// The dotted path of every leaf of a YAML document (scalars and sequences are leaves), and whether it is null.
    static func leaves(ofYAML text: String) throws -> [(key: String, isNull: Bool)] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError(key: "(file)", "YAML syntax: \(error)")
        }
        guard let root else { return [] }
        guard case .mapping = root else { throw ConfigurationError(key: "(file)", "expected a mapping of keys") }
        var result: [(String, Bool)] = []
        func walk(_ node: Node, _ path: String) throws {
            switch node {
            case .mapping(let mapping):
                for (keyNode, value) in mapping {
                    guard let name = keyNode.string, !name.isEmpty else {
                        throw ConfigurationError(key: path.isEmpty ? "(file)" : path, "keys must be strings")
                    }
                    try walk(value, path.isEmpty ? name : path + "." + name)
                }
            case .scalar(let scalar):
                result.append((path, scalar.tag == Tag(.null) || (scalar.string.isEmpty && scalar.style == .plain)))
            default:
                result.append((path, false))
            }
        }
        try walk(root, "")
        return result
    }

    /// The candidate within a small edit distance of `key` (at most 2 edits, or a third of its length), if any.
    static func closest(to key: String, among candidates: some Sequence<String>) -> String? {
        let limit = max(2, key.count / 3)
        let scored = candidates.map { ($0, Self.editDistance(key.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= limit else { return nil }
        return best.0
    }

    /// Levenshtein distance over Unicode scalars.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
