import Foundation
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
    /// Seconds since the epoch at accept, for `pop3d who`.
    let since = Int64(Date().timeIntervalSince1970)
    let tls: ServerTLSObservation
    /// The client's address (after PROXY), shared with the pipeline that learns it.
    let clientAddress: NIOLockedValueBox<SocketAddress?>

    private struct State {
        var timedOut = false
        var closedByServer = false
        var kicked = false
        var finished = false
        var user: String?
        var phase = "authorization"
        var octetsSent = 0
    }

    private let state = NIOLockedValueBox(State())

    init(id: UInt64, listener: ListenerKind, clientAddress: NIOLockedValueBox<SocketAddress?>, metrics: ServerMetrics) {
        self.id = id
        self.listener = listener
        self.clientAddress = clientAddress
        self.tls = ServerTLSObservation { reason in metrics.tlsHandshakeFailed(listener, reason) }
    }

    func loggedIn(user: String) { self.state.withLockedValue { $0.user = user; $0.phase = "transaction" } }
    func updating() { self.state.withLockedValue { $0.phase = "update" } }
    func sent(_ octets: Int) { self.state.withLockedValue { $0.octetsSent += octets } }
    var user: String? { self.state.withLockedValue { $0.user } }

    /// An admin's `pop3d kick`: the connection is closed; the session's DELEs are not applied.
    func kick() { self.state.withLockedValue { $0.kicked = true; $0.closedByServer = true } }

    /// The session has ended and released its maildrop.
    func finish() { self.state.withLockedValue { $0.finished = true } }
    var isFinished: Bool { self.state.withLockedValue { $0.finished } }

    /// What `pop3d who` shows of the session.
    var info: ControlSessionInfo {
        let state = self.state.withLockedValue { $0 }
        return ControlSessionInfo(
            id: self.id,
            user: state.user,
            client: self.clientAddress.withLockedValue { $0 }.map(SessionDriver.hostAndPort),
            listener: self.listener.rawValue,
            since: self.since,
            state: state.phase,
            octetsSent: state.octetsSent
        )
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
        if state.kicked { return .kicked }
        if state.closedByServer { return .closedByServer }
        switch error {
        // A client that closes TCP without TLS's close_notify ends like one that says nothing at all.
        case nil, is ChannelError, is IOError, is NIOAsyncWriterError, is NIOSSLError: return .clientClosed
        default: return .error
        }
    }
}
