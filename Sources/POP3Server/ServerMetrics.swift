import CoreMetrics
import Foundation
import Metrics
import POP3NIO
import Prometheus

/// pop3d's metrics, through swift-metrics with an explicit factory: the Prometheus registry of `metrics.listen`, or
/// no-op handlers when metrics are off. Every label value comes from a fixed set (listener kinds, mechanism names,
/// `SessionFailure.Label`, `SessionEnd`, `TLSHandshakeFailure`); none carries a user name or an address.
public struct ServerMetrics: Sendable {
    let factory: any MetricsFactory
    /// The registry `GET /metrics` renders; nil when metrics are off.
    public let registry: PrometheusCollectorRegistry?

    /// Storage operations timed by `pop3d_storage_operation_duration_seconds`.
    public enum StorageOperation: String, Sendable {
        /// Opening (and locking) a maildrop at login.
        case open
        /// Streaming one message (RETR/TOP), to its end.
        case read
        /// UPDATE: removing the deleted messages and unlocking.
        case commit
        /// Storing one delivered copy (LMTP).
        case deliver
    }

    /// Metrics off: every call is a no-op.
    public static let disabled = ServerMetrics(factory: NOOPMetricsHandler.instance, registry: nil)

    /// Metrics into a Prometheus registry of their own (one per server, so that tests may run several).
    public static func prometheus(_ registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) -> ServerMetrics {
        var factory = PrometheusMetricsFactory(registry: registry)
        // Sessions last from milliseconds (a refused login) to minutes (a large download).
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30),
            .seconds(60), .seconds(300),
        ]
        return ServerMetrics(factory: factory, registry: registry)
    }

    init(factory: any MetricsFactory, registry: PrometheusCollectorRegistry?) {
        self.factory = factory
        self.registry = registry
    }

    public var isEnabled: Bool { self.registry != nil }

    private func count(_ label: String, _ dimensions: [(String, String)] = [], by amount: Int = 1) {
        guard self.isEnabled else { return }
        Counter(label: label, dimensions: dimensions, factory: self.factory).increment(by: amount)
    }

    // MARK: connections and sessions

    func connectionOpened(_ listener: ListenerKind) {
        guard self.isEnabled else { return }
        Meter(label: "pop3d_connections_open", dimensions: [("listener", listener.rawValue)], factory: self.factory).increment()
    }

    func connectionClosed(_ listener: ListenerKind) {
        guard self.isEnabled else { return }
        Meter(label: "pop3d_connections_open", dimensions: [("listener", listener.rawValue)], factory: self.factory).decrement()
    }

    func sessionEnded(_ listener: ListenerKind, _ end: SessionEnd, duration: Duration) {
        guard self.isEnabled else { return }
        self.count("pop3d_sessions_total", [("listener", listener.rawValue), ("result", end.rawValue)])
        Metrics.Timer(label: "pop3d_session_duration_seconds", dimensions: [("listener", listener.rawValue)], factory: self.factory)
            .recordNanoseconds(Self.nanoseconds(duration))
    }

    func tlsHandshakeFailed(_ listener: ListenerKind, _ reason: TLSHandshakeFailure) {
        self.count("pop3d_tls_handshake_failures_total", [("listener", listener.rawValue), ("reason", reason.rawValue)])
    }

    // MARK: authentication

    /// `result` is `success` or a `SessionFailure.Label`; `mechanism` a SASL mechanism name or `USER`.
    func login(mechanism: String, result: String) {
        self.count("pop3d_logins_total", [("mechanism", Self.mechanismLabel(mechanism)), ("result", result)])
        if result == SessionFailure.Label.inUse.rawValue { self.count("pop3d_in_use_refusals_total") }
    }

    func penaltyDelay(_ wait: Duration) {
        guard self.isEnabled else { return }
        self.count("pop3d_auth_penalty_delays_total")
        FloatingPointCounter(label: "pop3d_auth_penalty_delay_seconds_total", dimensions: [], factory: self.factory)
            .increment(by: Double(Self.nanoseconds(wait)) / 1e9)
    }

    /// A mechanism name from the fixed set the server offers; anything else (never announced) as `other`.
    static func mechanismLabel(_ name: String) -> String {
        let known = ["USER", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "OAUTHBEARER", "XOAUTH2"]
        let upper = name.uppercased()
        return known.contains(upper) ? upper : "other"
    }

    // MARK: mail

    func retrieved(octets: Int) {
        guard self.isEnabled else { return }
        self.count("pop3d_messages_retrieved_total")
        self.count("pop3d_retrieved_octets_total", by: octets)
    }

    func deleted(messages: Int, octets: Int) {
        guard self.isEnabled, messages > 0 else { return }
        self.count("pop3d_messages_deleted_total", by: messages)
        self.count("pop3d_deleted_octets_total", by: octets)
    }

    /// `via` is `lmtp`; `result` is `delivered`, `tempfail` or `rejected`.
    func delivery(via: String, result: String) {
        self.count("pop3d_deliveries_total", [("via", via), ("result", result)])
    }

    func storage(_ operation: StorageOperation, since start: ContinuousClock.Instant) {
        guard self.isEnabled else { return }
        Metrics.Timer(label: "pop3d_storage_operation_duration_seconds", dimensions: [("operation", operation.rawValue)], factory: self.factory)
            .recordNanoseconds(Self.nanoseconds(ContinuousClock.now - start))
    }

    // MARK: server

    /// The certificate's notAfter as seconds since the epoch (set at start and at each reload).
    func certificateExpiry(_ date: Date?) {
        guard self.isEnabled, let date else { return }
        Gauge(label: "pop3d_tls_certificate_expiry_timestamp_seconds", dimensions: [], factory: self.factory)
            .record(date.timeIntervalSince1970.rounded())
    }

    func buildInfo(version: String) {
        guard self.isEnabled else { return }
        Gauge(label: "pop3d_build_info", dimensions: [("version", version)], factory: self.factory).record(1)
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// How a POP3 session ended: the `result` label of `pop3d_sessions_total` and the `end` of its summary log line.
public enum SessionEnd: String, Sendable, CaseIterable {
    /// QUIT, and UPDATE (if any) done.
    case quit
    /// QUIT, but UPDATE could not remove every deleted message.
    case commitFailed = "commit_failed"
    /// Closed by the server after too many bad commands (or an over-long line).
    case tooManyErrors = "too_many_errors"
    /// The client went away without QUIT.
    case clientClosed = "client_closed"
    /// Closed by the server: an idle or pre-login timeout.
    case timeout
    /// The TLS handshake failed (or STLS's).
    case tlsFailed = "tls_failed"
    /// Refused at once: connection limits.
    case refused
    /// Closed by the server at the end of the shutdown grace period.
    case closedByServer = "closed_by_server"
    /// Closed by an admin (`pop3d kick`).
    case kicked
    /// Anything else (an I/O error).
    case error
}
