import Foundation
import NIOCore
import NIOPosix
import NIOSSL

/// A deliberately raw POP3 test client: sends exact bytes, reads exact lines, over TCP or TLS.
final class TestClient: @unchecked Sendable {
    // @unchecked: used from one test task at a time; the iterator is not shared.
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
    private var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private var buffer = ByteBuffer()

    static func connect(
        host: String = "127.0.0.1",
        port: Int,
        tls trustRoot: String? = nil,
        serverName: String? = "localhost",
        alpn: [String] = ["pop3"]
    ) async throws -> TestClient {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let trustRoot {
                        try channel.pipeline.syncOperations.addHandler(try Self.tlsHandler(trustRoot: trustRoot, serverName: serverName, alpn: alpn))
                    }
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return TestClient(channel: channel)
    }

    static func tlsHandler(trustRoot: String, serverName: String?, alpn: [String]) throws -> NIOSSLClientHandler {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .file(trustRoot)
        configuration.applicationProtocols = alpn
        if serverName == nil { configuration.certificateVerification = .noHostnameVerification }
        return try NIOSSLClientHandler(context: NIOSSLContext(configuration: configuration), serverHostname: serverName)
    }

    /// No test connection lives longer than this: a hung server fails the test instead of stalling the suite.
    static let connectionDeadline = TimeAmount.seconds(90)

    init(channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>) {
        self.channel = channel
        let raw = channel.channel
        raw.eventLoop.scheduleTask(in: Self.connectionDeadline) { raw.close(promise: nil) }
        self.iterator = channel.inbound.makeAsyncIterator()
    }

    deinit {
        self.channel.outbound.finish()
        self.channel.channel.close(promise: nil)
    }

    /// Upgrades this connection with TLS after a `+OK` to STLS.
    func startTLS(trustRoot: String) async throws {
        try await self.channel.channel.pipeline.addHandler(try Self.tlsHandler(trustRoot: trustRoot, serverName: "localhost", alpn: ["pop3"]), position: .first)
    }

    func send(_ text: String) async throws {
        try await self.channel.outbound.write(ByteBuffer(string: text))
    }

    /// Reads one line (without CRLF); `nil` at EOF.
    func readLine() async throws -> String? {
        while true {
            if let lf = self.buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                let length = lf - self.buffer.readerIndex
                var line = self.buffer.readString(length: length)!
                self.buffer.moveReaderIndex(forwardBy: 1)
                if line.hasSuffix("\r") { line.removeLast() }
                return line
            }
            guard let chunk = try await self.iterator.next() else { return nil }
            var c = chunk
            self.buffer.writeBuffer(&c)
        }
    }

    /// Sends a command and returns the status line.
    func command(_ line: String) async throws -> String {
        try await self.send(line + "\r\n")
        return try await self.readLine() ?? "<EOF>"
    }

    /// Reads a multi-line body up to ".", un-stuffing it; lines without CRLF.
    func readMultiline() async throws -> [String] {
        var lines: [String] = []
        while let line = try await self.readLine() {
            if line == "." { return lines }
            lines.append(line.hasPrefix(".") ? String(line.dropFirst()) : line)
        }
        throw TestClientError.unexpectedEOF
    }

    /// Reads until EOF; true if the connection was closed by the server.
    func readUntilClosed() async throws -> [String] {
        var lines: [String] = []
        while let line = try await self.readLine() { lines.append(line) }
        return lines
    }

    func close() async {
        try? await self.channel.channel.close()
    }
}

enum TestClientError: Error { case unexpectedEOF }
