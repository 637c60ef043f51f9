import NIOCore
import POP3Core

/// Splits what an LMTP client sends into command lines and message content, with bounded memory: command lines
/// are limited (1,000 octets with CRLF by default); DATA content is passed on in pieces as it arrives, unstuffed,
/// and ends only at CRLF "." CRLF (a bare-LF dot is content: the end-of-data smuggling of CVE-2023-51764 cannot
/// start a second message); a BDAT chunk is exactly its announced size. The mode is set by the server after the
/// session says so, so pipelined commands after a chunk stay commands.
public struct LMTPInputFramer: Sendable {
    public enum Frame: Sendable, Equatable {
        /// A command line without its line ending (CRLF, or a bare LF, which commands tolerate).
        case line(ByteBuffer)
        /// A command line went past the limit; it has been (or is being) skipped up to its LF.
        case lineTooLong
        /// A piece of message content, line endings as sent.
        case content(ByteBuffer)
        /// The end of DATA (the final dot) or of a BDAT chunk.
        case endOfContent
    }

    private enum Mode: Sendable {
        case command
        case skippingLongLine
        case data(DotUnstuffer)
        case chunk(remaining: Int)
    }

    public let maximumLineLength: Int
    private var buffer = ByteBuffer()
    private var mode = Mode.command

    public init(maximumLineLength: Int = LMTPDefaults.maximumCommandLineLength) {
        self.maximumLineLength = maximumLineLength
    }

    /// Bytes read from the connection.
    public mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        if self.buffer.readableBytes == 0 {
            self.buffer = bytes
        } else {
            self.buffer.writeBuffer(&bytes)
        }
    }

    /// Content follows (after DATA was answered with 354).
    public mutating func startData() {
        self.mode = .data(DotUnstuffer())
    }

    /// A BDAT chunk of `size` octets follows.
    public mutating func startChunk(size: Int) {
        self.mode = .chunk(remaining: size)
    }

    /// Whether a complete frame may be waiting (the server flushes its replies when there is none).
    public var hasBufferedInput: Bool { self.buffer.readableBytes > 0 }

    /// The next frame, or nil when more input is needed.
    public mutating func next() -> Frame? {
        while true {
            switch self.mode {
            case .command:
                let view = self.buffer.readableBytesView
                guard let lf = view.firstIndex(of: UInt8(ascii: "\n")) else {
                    if view.count >= self.maximumLineLength {
                        self.buffer.clear()
                        self.mode = .skippingLongLine
                        return .lineTooLong
                    }
                    self.compact()
                    return nil
                }
                let length = lf - view.startIndex + 1
                guard length <= self.maximumLineLength else {
                    self.buffer.moveReaderIndex(forwardBy: length)
                    return .lineTooLong
                }
                var line = self.buffer.readSlice(length: length)!
                line.moveWriterIndex(to: line.writerIndex - 1)
                if line.readableBytesView.last == UInt8(ascii: "\r") { line.moveWriterIndex(to: line.writerIndex - 1) }
                return .line(line)
            case .skippingLongLine:
                guard let lf = self.buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
                    self.buffer.clear()
                    return nil
                }
                self.buffer.moveReaderIndex(to: lf + 1)
                self.mode = .command
            case .data(var unstuffer):
                guard self.buffer.readableBytes > 0 else { return nil }
                var out = ByteBuffer()
                out.reserveCapacity(self.buffer.readableBytes)
                let done = unstuffer.decode(&self.buffer, into: &out)
                if done {
                    self.mode = .command
                    // The content before the dot first; the end comes on the next call.
                    if out.readableBytes > 0 {
                        self.mode = .chunk(remaining: 0)
                        return .content(out)
                    }
                    return .endOfContent
                }
                self.mode = .data(unstuffer)
                self.compact()
                if out.readableBytes > 0 { return .content(out) }
                return nil
            case .chunk(let remaining):
                if remaining == 0 {
                    self.mode = .command
                    return .endOfContent
                }
                guard self.buffer.readableBytes > 0 else { return nil }
                let count = min(remaining, self.buffer.readableBytes)
                let piece = self.buffer.readSlice(length: count)!
                self.mode = .chunk(remaining: remaining - count)
                if self.buffer.readableBytes == 0 { self.buffer.clear() }
                return .content(piece)
            }
        }
    }

    private mutating func compact() {
        if self.buffer.readableBytes == 0 {
            self.buffer.clear()
        } else if self.buffer.readerIndex > 64 * 1024 {
            self.buffer.discardReadBytes()
        }
    }
}
