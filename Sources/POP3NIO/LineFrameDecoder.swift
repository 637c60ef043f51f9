import NIOCore

/// What the framing layer hands to a session.
public enum POP3InboundFrame: Sendable, Equatable {
    /// One line without its line break (CRLF or a lone LF).
    case line(ByteBuffer)
    /// A line longer than the limit; its bytes are discarded up to the next LF. Sent once per such line.
    case overlongLine
    /// After STLS: everything before this frame was received in plaintext and must be discarded;
    /// everything after it arrives through TLS.
    case tlsStarted
}

/// Splits the byte stream into lines, with a hard limit on line length.
///
/// - A line may end in CRLF or in a lone LF (DESIGN: LF-only line ends are accepted); the break is removed.
/// - A line whose length including its CRLF exceeds `maximumLineLength` yields `.overlongLine` as soon as the
///   limit is passed, and everything up to its LF is dropped, so memory per connection stays bounded.
/// - Bytes left when the decoder is removed (STLS upgrade) or at EOF are dropped, never re-queued as commands
///   (docs/security-cases.md cases 1–3, the NO STARTTLS command-injection class).
/// - SeeAlso: [RFC 2449 §4](https://www.rfc-editor.org/rfc/rfc2449#section-4)
public struct LineFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = POP3InboundFrame

    public let maximumLineLength: Int
    private var discarding = false
    /// How far the buffer has been searched for LF already.
    private var scanned = 0

    public init(maximumLineLength: Int) {
        precondition(maximumLineLength >= 3)
        self.maximumLineLength = maximumLineLength
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let view = buffer.readableBytesView
        guard let lf = view[(view.startIndex + self.scanned)...].firstIndex(of: UInt8(ascii: "\n")) else {
            self.scanned = view.count
            if self.discarding {
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                self.scanned = 0
            } else if buffer.readableBytes + 1 > self.maximumLineLength {
                // Even with only an LF to come, the line is too long.
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                self.scanned = 0
                self.discarding = true
                context.fireChannelRead(Self.wrapInboundOut(.overlongLine))
            }
            return .needMoreData
        }
        let lineLength = lf - view.startIndex  // bytes before LF
        self.scanned = 0
        if self.discarding {
            buffer.moveReaderIndex(forwardBy: lineLength + 1)
            self.discarding = false
            return .continue
        }
        var line = buffer.readSlice(length: lineLength)!
        buffer.moveReaderIndex(forwardBy: 1)
        let hasCR = line.readableBytesView.last == UInt8(ascii: "\r")
        if hasCR { line.moveWriterIndex(to: line.writerIndex - 1) }
        // The limit counts a CRLF even when the client sent a lone LF.
        if line.readableBytes + 2 > self.maximumLineLength {
            context.fireChannelRead(Self.wrapInboundOut(.overlongLine))
        } else {
            context.fireChannelRead(Self.wrapInboundOut(.line(line)))
        }
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // At EOF a partial line is no command. On removal (STLS) whatever the client sent after STLS in
        // plaintext is dropped whole: it must never be executed once TLS is up.
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }
}
