import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import POP3NIO

/// What the server knows of one open POP3 connection, shared by its pipeline (timeouts, TLS), its session and the
/// server (shutdown): how it ended when the server ended it, and its TLS.
final class ConnectionRecord: Sendable {
    /// The session id, in every log line of the connection (`conn`).
    let id: UInt64
    let listener: ListenerKind
    let started = ContinuousClock.now
    let tls: ServerTLSObservation

    private struct State {
        var timedOut = false
        var closedByServer = false
    }

    private let state = NIOLockedValueBox(State())

    init(id: UInt64, listener: ListenerKind, metrics: ServerMetrics) {
        self.id = id
        self.listener = listener
        self.tls = ServerTLSObservation { reason in metrics.tlsHandshakeFailed(listener, reason) }
    }

    /// The idle or pre-login timeout closed the connection.
    func timedOut() { self.state.withLockedValue { $0.timedOut = true } }

    /// The server closes the connection (shutdown's grace period ended).
    func closingByServer() { self.state.withLockedValue { $0.closedByServer = true } }

    /// How a session that did not end by QUIT or for bad commands ended, as far as the connection tells.
    func endWithoutQuit(error: (any Error)?) -> SessionEnd {
        let state = self.state.withLockedValue { $0 }
        if self.tls.failure != nil { return .tlsFailed }
        if state.timedOut { return .timeout }
        if state.closedByServer { return .closedByServer }
        switch error {
        // A client that closes TCP without TLS's close_notify ends like one that says nothing at all.
        case nil, is ChannelError, is IOError, is NIOAsyncWriterError, is NIOSSLError: return .clientClosed
        default: return .error
        }
    }
}
