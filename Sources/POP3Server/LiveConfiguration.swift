import Logging
import NIOConcurrencyHelpers

/// The configuration the running server reads for each new connection; a SIGHUP reload replaces the parts that can
/// change without rebinding (limits, policies, the failure delay, trusted networks, LMTP's rules, the log level) and
/// names the rest, which need a restart.
public final class LiveConfiguration: Sendable {
    private let box: NIOLockedValueBox<ServerConfiguration>
    /// The level every logger of the server reads (`log.level`).
    public let logLevel: LogLevelControl

    public init(_ configuration: ServerConfiguration, logLevel: LogLevelControl? = nil) {
        self.box = NIOLockedValueBox(configuration)
        self.logLevel = logLevel ?? LogLevelControl(Logger.Level(rawValue: configuration.logLevel) ?? .info)
    }

    public var current: ServerConfiguration { self.box.withLockedValue { $0 } }

    /// Keys whose changes apply at once; every other key needs a restart. Prefixes end with a dot.
    static let reloadable = [
        "limits.", "policy.", "auth.failure_delay", "trusted_networks", "proxy.trusted_networks", "lmtp.", "log.level",
    ]
    static let needRestart = [
        "limits.index_cache_messages", "limits.maildrop_messages", "limits.shutdown_grace", "lmtp.socket_mode", "lmtp.hostname",
    ]

    static func isReloadable(_ key: String) -> Bool {
        !Self.needRestart.contains(key) && Self.reloadable.contains { $0.hasSuffix(".") ? key.hasPrefix($0) : key == $0 }
    }

    /// The keys whose values differ between two configurations, as `check-config` prints them.
    static func changedKeys(_ old: ServerConfiguration, _ new: ServerConfiguration) -> [String] {
        let before = Self.flatten(old.renderedYAML)
        let after = Self.flatten(new.renderedYAML)
        return Set(before.keys).union(after.keys).filter { before[$0] != after[$0] }.sorted()
    }

    /// `a:\n  b: 1` → ["a.b": "1"] (the rendered configuration: two spaces per level, one key per line).
    static func flatten(_ yaml: String) -> [String: String] {
        var path: [(indent: Int, key: String)] = []
        var out: [String: String] = [:]
        for line in yaml.split(separator: "\n") {
            let indent = line.prefix { $0 == " " }.count
            let text = line.dropFirst(indent)
            guard !text.hasPrefix("#"), let colon = text.firstIndex(of: ":") else { continue }
            let key = String(text[..<colon])
            let value = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            while let last = path.last, last.indent >= indent { path.removeLast() }
            let full = (path.map(\.key) + [key]).joined(separator: ".")
            if value.isEmpty {
                path.append((indent, key))
            } else {
                out[full] = value
            }
        }
        return out
    }

    /// Applies what can change now from `new`; returns the keys applied and those left for a restart.
    func apply(_ reloaded: ServerConfiguration) -> (applied: [String], needRestart: [String]) {
        let old = self.current
        var new = reloaded
        if old.listenersFromCommandLine {
            new.pop3sListeners = old.pop3sListeners
            new.pop3Listeners = old.pop3Listeners
            new.lmtp.listeners = old.lmtp.listeners
            new.metricsListener = old.metricsListener
        }
        let changed = Self.changedKeys(old, new)
        let applied = changed.filter(Self.isReloadable)
        let restart = changed.filter { !Self.isReloadable($0) }
        guard !applied.isEmpty else { return ([], restart) }
        var merged = old
        let keptLimits = (old.limits.indexCacheMessages, old.limits.maildropMessages, old.limits.shutdownGracePeriod)
        merged.limits = new.limits
        (merged.limits.indexCacheMessages, merged.limits.maildropMessages, merged.limits.shutdownGracePeriod) = keptLimits
        merged.policy = new.policy
        merged.authenticationFailureDelay = new.authenticationFailureDelay
        merged.trustedNetworks = new.trustedNetworks
        merged.proxyNetworks = new.proxyNetworks
        let (listeners, socketMode, hostname) = (old.lmtp.listeners, old.lmtp.socketMode, old.lmtp.hostname)
        merged.lmtp = new.lmtp
        (merged.lmtp.listeners, merged.lmtp.socketMode, merged.lmtp.hostname) = (listeners, socketMode, hostname)
        merged.logLevel = new.logLevel
        self.box.withLockedValue { $0 = merged }
        self.logLevel.level = Logger.Level(rawValue: new.logLevel) ?? .info
        return (applied, restart)
    }
}

/// A log level shared by every logger of the process, so that a reload changes it everywhere at once.
public final class LogLevelControl: Sendable {
    private let box: NIOLockedValueBox<Logger.Level>
    public init(_ level: Logger.Level) { self.box = NIOLockedValueBox(level) }
    public var level: Logger.Level {
        get { self.box.withLockedValue { $0 } }
        set { self.box.withLockedValue { $0 = newValue } }
    }
}

/// A handler whose level is the shared `LogLevelControl`'s (setting it on one logger changes nothing).
public struct ControlledLevelLogHandler: LogHandler {
    var inner: any LogHandler
    let control: LogLevelControl

    public init(_ inner: any LogHandler, control: LogLevelControl) {
        self.inner = inner
        self.control = control
    }

    public var logLevel: Logger.Level {
        get { self.control.level }
        set {}
    }

    public var metadata: Logger.Metadata {
        get { self.inner.metadata }
        set { self.inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.inner[metadataKey: key] }
        set { self.inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) {
        self.inner.log(event: event)
    }
}
