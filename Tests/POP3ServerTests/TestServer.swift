import Accounts
import Foundation
import Logging
import MailStore
import NIOCore
import NIOPosix
import POP3Server

/// A real server on ephemeral loopback ports with a temporary data folder.
final class TestServer: Sendable {
    let folder: String
    let certificate: String
    let pop3sPort: Int
    let pop3Port: Int
    let task: Task<Void, any Error>
    let daemon: POP3Daemon

    static let users = ["alice": "alice-pw", "bob": "bob pw with spaces", "carol": "carol-pw"]

    static func start(configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> TestServer {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("pop3d-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/tls", withIntermediateDirectories: true)
        let (certificate, key) = try DevCertificate.make()
        try certificate.write(toFile: folder + "/tls/cert.pem", atomically: true, encoding: .utf8)
        try key.write(toFile: folder + "/tls/key.pem", atomically: true, encoding: .utf8)
        let passwd = Self.users.sorted { $0.key < $1.key }.map { "\($0.key):{PLAIN}\($0.value)" }.joined(separator: "\n") + "\n"
        try passwd.write(toFile: folder + "/users", atomically: true, encoding: .utf8)

        var configuration = ServerConfiguration(passwdFile: folder + "/users", maildirTemplate: folder + "/mail/%u")
        configuration.pop3sListeners = [ListenAddress(host: "127.0.0.1", port: 0)]
        configuration.pop3Listeners = [ListenAddress(host: "127.0.0.1", port: 0)]
        configuration.certificatePath = folder + "/tls/cert.pem"
        configuration.privateKeyPath = folder + "/tls/key.pem"
        configure(&configuration)

        var logger = Logger(label: "test-pop3d")
        logger.logLevel = ProcessInfo.processInfo.environment["POP3_TEST_LOG"] != nil ? .debug : .critical
        // The assembly `pop3d serve` runs (POP3Daemon), without the privilege drop and without taking over the
        // test process's signals; cancelling the task shuts it down.
        let daemon = try POP3Daemon(configuration: configuration, dropPrivileges: false, logger: logger)
        let (stream, continuation) = AsyncStream.makeStream(of: [BoundListener].self)
        let task = Task { try await daemon.run(handleSignals: false, onListening: { continuation.yield($0) }) }
        var iterator = stream.makeAsyncIterator()
        guard let listeners = await iterator.next() else { throw CancellationError() }
        return TestServer(
            folder: folder,
            certificate: folder + "/tls/cert.pem",
            pop3sPort: listeners.first { $0.kind == .pop3s }?.port ?? 0,
            pop3Port: listeners.first { $0.kind == .pop3 }?.port ?? 0,
            task: task,
            daemon: daemon
        )
    }

    private init(folder: String, certificate: String, pop3sPort: Int, pop3Port: Int, task: Task<Void, any Error>, daemon: POP3Daemon) {
        self.folder = folder
        self.certificate = certificate
        self.pop3sPort = pop3sPort
        self.pop3Port = pop3Port
        self.task = task
        self.daemon = daemon
    }

    func maildir(_ user: String) -> String { self.folder + "/mail/" + user }

    @discardableResult
    func deliver(_ user: String, _ message: String) throws -> String {
        try MaildirDelivery.deliver(Array(message.utf8), toMaildir: self.maildir(user))
    }

    func stop() async {
        self.task.cancel()
        _ = try? await self.task.value
        try? FileManager.default.removeItem(atPath: self.folder)
    }

    /// A TLS connection on the POP3S port, greeting consumed.
    func connectTLS() async throws -> TestClient {
        let client = try await TestClient.connect(port: self.pop3sPort, tls: self.certificate)
        guard let greeting = try await client.readLine(), greeting.hasPrefix("+OK") else { throw TestClientError.unexpectedEOF }
        return client
    }

    /// Logged in over TLS as `user`.
    func login(_ user: String) async throws -> TestClient {
        let client = try await self.connectTLS()
        let userReply = try await client.command("USER \(user)")
        let passReply = try await client.command("PASS \(Self.users[user]!)")
        guard userReply.hasPrefix("+OK"), passReply.hasPrefix("+OK") else {
            throw LoginError(reply: passReply)
        }
        return client
    }

    struct LoginError: Error { let reply: String }
}
