import NIOCore

/// Turns CRLF into LF, as Maildir stores messages (and as Dovecot's LMTP does); a CR not followed by LF stays.
/// Streaming: a CR at the end of one piece waits for the next.
public struct LineEndingNormalizer: Sendable {
    private var pendingCR = false

    public init() {}

    public mutating func normalize(_ input: ByteBuffer, into out: inout ByteBuffer) {
        let view = input.readableBytesView
        guard !view.isEmpty else { return }
        var start = view.startIndex
        if self.pendingCR {
            self.pendingCR = false
            if view.first != UInt8(ascii: "\n") { out.writeInteger(UInt8(ascii: "\r")) }
        }
        var index = start
        while let cr = view[index...].firstIndex(of: UInt8(ascii: "\r")) {
            let next = view.index(after: cr)
            if next == view.endIndex {
                out.writeBytes(view[start..<cr])
                self.pendingCR = true
                return
            }
            if view[next] == UInt8(ascii: "\n") {
                out.writeBytes(view[start..<cr])
                start = next
            }
            index = next
        }
        out.writeBytes(view[start...])
    }

    /// The end of the message: a CR still waiting is content.
    public mutating func finish(into out: inout ByteBuffer) {
        if self.pendingCR { out.writeInteger(UInt8(ascii: "\r")) }
        self.pendingCR = false
    }
}
