/// POP3 sizes of stored messages.
///
/// A POP3 server sends every line ending as CRLF (RFC 1939 §3), so the size announced by STAT and LIST counts each bare
/// LF as two octets. CRLF stays two octets and a lone CR stays one. Dot-stuffing and the terminating line are not
/// counted (RFC 1939 §11: the size is of the message as it would be sent, "without" the byte-stuffing). This is
/// what Dovecot stores as the virtual size (`,W=` / `W` in `dovecot-uidlist`).
public enum MessageSize {
    /// The POP3 size of a whole message.
    public static func pop3Size(of bytes: some Sequence<UInt8>) -> Int {
        var counter = Counter()
        counter.update(bytes)
        return counter.pop3Size
    }

    /// Streaming size counter: feed chunks in order, any split.
    public struct Counter: Sendable, Hashable {
        /// Octets fed so far (the physical size).
        public private(set) var octets = 0
        /// The POP3 ("virtual") size of what was fed so far.
        public private(set) var pop3Size = 0
        private var previousWasCR = false

        public init() {}

        public mutating func update(_ bytes: some Sequence<UInt8>) {
            let handled: Void? = bytes.withContiguousStorageIfAvailable { buffer in
                self.update(UnsafeRawBufferPointer(buffer))
            }
            if handled != nil { return }
            for byte in bytes { self.add(byte) }
        }

        public mutating func update(_ buffer: UnsafeRawBufferPointer) {
            var bareLineFeeds = 0
            var previousWasCR = self.previousWasCR
            for byte in buffer {
                if byte == 0x0A && !previousWasCR { bareLineFeeds += 1 }
                previousWasCR = byte == 0x0D
            }
            self.previousWasCR = previousWasCR
            self.octets += buffer.count
            self.pop3Size += buffer.count + bareLineFeeds
        }

        private mutating func add(_ byte: UInt8) {
            self.octets += 1
            self.pop3Size += (byte == 0x0A && !self.previousWasCR) ? 2 : 1
            self.previousWasCR = byte == 0x0D
        }
    }
}
