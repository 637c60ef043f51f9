import Foundation
import NIOCore
import SystemIO

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Where fetched mail goes when a site routes it through its MTA, as fetchmail does: LMTP (RFC 2033) on a Unix socket
/// or a loopback TCP port, or SMTP on a loopback TCP port. A message counts as delivered only after the MTA's 2xx
/// reply to its final dot; then, and only then, may it be DELE'd. No TLS is spoken, so TCP is loopback only.
public struct MTATarget: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable { case lmtp, smtp }
    public enum Address: Sendable, Equatable {
        case unix(String)
        case tcp(host: String, port: Int)
    }

    public var kind: Kind
    public var address: Address
    /// The envelope recipient (RCPT TO), e.g. `alice` or `alice@example.com`.
    public var recipient: String

    public var description: String {
        switch self.address {
        case .unix(let path): "\(self.kind.rawValue):unix:\(path)"
        case .tcp(let host, let port): "\(self.kind.rawValue):\(host.contains(":") ? "[\(host)]" : host):\(port)"
        }
    }

    /// `unix:PATH` (LMTP only) or `HOST:PORT` / `[IPv6]:PORT` on a loopback address; nil with the reason otherwise.
    public static func parse(kind: Kind, _ text: String, recipient: String) -> Result<MTATarget, FetchSetupError> {
        guard !recipient.isEmpty, !recipient.contains(where: { $0 == "<" || $0 == ">" || $0 == "\r" || $0 == "\n" || $0 == " " }) else {
            return .failure(FetchSetupError("the envelope recipient must be an address without spaces or angle brackets"))
        }
        if text.hasPrefix("unix:") {
            guard kind == .lmtp else { return .failure(FetchSetupError("smtp: wants HOST:PORT; a Unix socket is for lmtp:")) }
            let path = String(text.dropFirst(5))
            guard path.hasPrefix("/") else { return .failure(FetchSetupError("\(kind.rawValue): unix: wants an absolute path")) }
            return .success(MTATarget(kind: kind, address: .unix(path), recipient: recipient))
        }
        var host = text
        var portText = ""
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[text.index(after: close)...].dropFirst())
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
        }
        guard let port = Int(portText), (1...65535).contains(port), !host.isEmpty else {
            return .failure(FetchSetupError("\(kind.rawValue): expected unix:PATH or HOST:PORT, got \"\(text)\""))
        }
        guard host == "localhost" || host.hasPrefix("127.") || host == "::1" else {
            return .failure(FetchSetupError("\(kind.rawValue): \(host) is not a loopback address (no TLS is spoken to the MTA; use a Unix socket or 127.0.0.1)"))
        }
        return .success(MTATarget(kind: kind, address: .tcp(host: host == "localhost" ? "127.0.0.1" : host, port: port), recipient: recipient))
    }
}

/// Hands each message to the MTA in one transaction. At-least-once, as an MDA: a crash after the MTA's 250 but
/// before the journal recorded it makes the next run hand the message over again.
public final class MTADestination: MessageDestination {
    public let target: MTATarget
    public let timeoutSeconds: Int
    private var spoolDirectory: String?
    /// The connection kept between messages of one run.
    private var connection: MTAConnection?

    public init(target: MTATarget, timeoutSeconds: Int = 120) {
        self.target = target
        self.timeoutSeconds = timeoutSeconds
    }

    deinit { self.connection?.close() }

    public func recover(journal: UIDLJournal) throws {
        self.spoolDirectory = journal.stateDirectory
    }

    public func begin(uid: String) throws -> any MessageSink {
        guard let spoolDirectory else { throw MailRetrieverError.notRecovered }
        let (fd, path) = try MDADestination.spoolFile(in: spoolDirectory, prefix: ".mta-spool")
        return Sink(destination: self, fd: fd, path: path)
    }

    /// One transaction for the spooled message (CRLF text); a failed one drops the connection.
    fileprivate func send(spool fd: Int32, path: String) throws {
        do {
            if self.connection == nil {
                self.connection = try MTAConnection.open(self.target, timeoutSeconds: self.timeoutSeconds)
            }
            try self.connection!.transaction(spool: fd, path: path)
        } catch {
            self.connection?.close()
            self.connection = nil
            throw error
        }
    }

    private final class Sink: MessageSink {
        private let destination: MTADestination
        private var fd: Int32
        private let path: String
        private let writer: BufferedFileWriter

        init(destination: MTADestination, fd: Int32, path: String) {
            self.destination = destination
            self.fd = fd
            self.path = path
            self.writer = BufferedFileWriter(fd: fd, path: path)
        }

        deinit { self.abort() }

        func write(_ chunk: ByteBuffer) throws {
            guard self.fd >= 0 else { throw MailRetrieverError.sinkClosed }
            try self.writer.append(contentsOf: Array(chunk.readableBytesView))
        }

        func commit() throws {
            guard self.fd >= 0 else { throw MailRetrieverError.sinkClosed }
            defer { self.abort() }
            try self.writer.flush()
            guard lseek(self.fd, 0, SEEK_SET) == 0 else { throw FileSystemError("lseek", path: self.path, errno: errno) }
            try self.destination.send(spool: self.fd, path: self.path)
        }

        func abort() {
            guard self.fd >= 0 else { return }
            FileSystem.close(self.fd)
            self.fd = -1
        }
    }
}

/// The MTA refused or failed: its reply, or what went wrong on the way.
public struct MTAError: Error, Sendable, Equatable, CustomStringConvertible {
    public var target: String
    public var step: String
    public var reply: String

    public var description: String { "\(self.target): \(self.step): \(self.reply)" }
}

/// A blocking LMTP/SMTP client connection (the sinks are synchronous), every read and write bounded by a timeout.
final class MTAConnection {
    let target: MTATarget
    private var fd: Int32
    private var buffered: [UInt8] = []

    private init(target: MTATarget, fd: Int32) {
        self.target = target
        self.fd = fd
    }

    static func open(_ target: MTATarget, timeoutSeconds: Int) throws -> MTAConnection {
        let address: SocketAddress
        do {
            switch target.address {
            case .unix(let path): address = try SocketAddress(unixDomainSocketPath: path)
            case .tcp(let host, let port): address = try SocketAddress(ipAddress: host, port: port)
            }
        } catch {
            throw MTAError(target: "\(target)", step: "address", reply: "\(error)")
        }
        let family: Int32 = if case .unix = target.address { AF_UNIX } else { Int32(address.protocol.rawValue) }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MTAError(target: "\(target)", step: "socket", reply: String(cString: strerror(errno))) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard address.withSockAddr({ connect(fd, $0, socklen_t($1)) }) == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw MTAError(target: "\(target)", step: "connect", reply: reason)
        }
        let connection = MTAConnection(target: target, fd: fd)
        do {
            try connection.expect(220, step: "greeting")
            try connection.command(target.kind == .lmtp ? "LHLO localhost" : "EHLO localhost", expect: 250)
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    func close() {
        guard self.fd >= 0 else { return }
        _ = try? self.send(Array("QUIT\r\n".utf8))
        Glibc.close(self.fd)
        self.fd = -1
    }

    /// MAIL, RCPT, DATA, the message (dot-stuffed, CRLF), the final dot: delivered on a 2xx reply to it.
    func transaction(spool: Int32, path: String) throws {
        let sender = try Self.returnPath(spool: spool, path: path)
        try self.command("MAIL FROM:<\(sender)>", expect: 250)
        try self.command("RCPT TO:<\(self.target.recipient)>", expect: 250)
        try self.command("DATA", expect: 354)
        var stuffer = MTADataWriter()
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var offset: off_t = 0
        while true {
            let count = pread(spool, &chunk, chunk.count, offset)
            if count < 0 { throw FileSystemError("pread", path: path, errno: errno) }
            if count == 0 { break }
            offset += off_t(count)
            try self.send(stuffer.encode(chunk[0..<count]))
        }
        try self.send(stuffer.finish())
        try self.expect(250, step: "end of data")
    }

    /// The message's Return-Path (the first header block only), else the null sender.
    static func returnPath(spool: Int32, path: String) throws -> String {
        var head = [UInt8](repeating: 0, count: 8192)
        let count = pread(spool, &head, head.count, 0)
        if count < 0 { throw FileSystemError("pread", path: path, errno: errno) }
        let text = String(decoding: head[0..<max(0, count)], as: UTF8.self)
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.hasSuffix("\r") ? line.dropLast() : line
            if trimmed.isEmpty { break }
            if trimmed.lowercased().hasPrefix("return-path:") {
                let value = trimmed.dropFirst("return-path:".count).trimmingCharacters(in: .whitespaces)
                let address = value.trimmingCharacters(in: CharacterSet(charactersIn: "<>"))
                if !address.contains(where: { $0 == "<" || $0 == ">" || $0 == " " || $0 == "\r" }) { return address }
            }
        }
        return ""
    }

    private func command(_ line: String, expect code: Int) throws {
        try self.send(Array((line + "\r\n").utf8))
        try self.expect(code, step: String(line.prefix(4)))
    }

    private func expect(_ code: Int, step: String) throws {
        let (got, text) = try self.reply(step: step)
        guard got == code || (code == 250 && (200..<300).contains(got)) else {
            throw MTAError(target: "\(self.target)", step: step, reply: "\(got) \(text)")
        }
    }

    /// One reply, multi-line ones joined.
    private func reply(step: String) throws -> (Int, String) {
        var lines: [String] = []
        while true {
            let line = try self.line(step: step)
            guard line.count >= 3, let code = Int(line.prefix(3)) else {
                throw MTAError(target: "\(self.target)", step: step, reply: "not a reply: \(logSafe(line))")
            }
            lines.append(String(line.dropFirst(4)))
            if line.count == 3 || line[line.index(line.startIndex, offsetBy: 3)] != "-" {
                return (code, lines.joined(separator: " "))
            }
            if lines.count > 100 { throw MTAError(target: "\(self.target)", step: step, reply: "reply over 100 lines") }
        }
    }

    private func line(step: String) throws -> String {
        while true {
            if let end = self.buffered.firstIndex(of: UInt8(ascii: "\n")) {
                var line = Array(self.buffered[..<end])
                self.buffered.removeFirst(end + 1)
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard self.buffered.count < 4096 else { throw MTAError(target: "\(self.target)", step: step, reply: "reply line over 4 KiB") }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = read(self.fd, &chunk, chunk.count)
            if count < 0 { throw MTAError(target: "\(self.target)", step: step, reply: "no reply: \(String(cString: strerror(errno)))") }
            if count == 0 { throw MTAError(target: "\(self.target)", step: step, reply: "connection closed") }
            self.buffered += chunk[0..<count]
        }
    }

    private func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { write(self.fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw MTAError(target: "\(self.target)", step: "send", reply: String(cString: strerror(errno)))
            }
            sent += count
        }
    }

    private func logSafe(_ text: String) -> String { String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }.prefix(200)) }
}

/// The DATA section of SMTP/LMTP from message bytes (CRLF or LF endings): every line ends in CRLF, a line starting
/// with a dot gets one more, and the end is CRLF.CRLF (a message without a final line break gets one).
struct MTADataWriter {
    private var atLineStart = true
    private var lastWasCR = false

    mutating func encode(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 32 + 8)
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                if !self.lastWasCR { out.append(UInt8(ascii: "\r")) }
                out.append(byte)
                self.atLineStart = true
                self.lastWasCR = false
                continue
            }
            if self.lastWasCR {
                // A lone CR inside a line stays as it is.
                self.lastWasCR = false
            }
            if self.atLineStart && byte == UInt8(ascii: ".") { out.append(UInt8(ascii: ".")) }
            self.atLineStart = false
            if byte == UInt8(ascii: "\r") { self.lastWasCR = true }
            out.append(byte)
        }
        return out
    }

    mutating func finish() -> [UInt8] {
        var out: [UInt8] = []
        if self.lastWasCR { out.append(UInt8(ascii: "\n")) } else if !self.atLineStart { out += Array("\r\n".utf8) }
        out += Array(".\r\n".utf8)
        return out
    }
}
