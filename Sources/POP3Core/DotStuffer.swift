import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Turns stored message bytes into the body of a multi-line POP3 response, in a streaming fashion.
///
/// - Every bare LF becomes CRLF; CRLF stays; a lone CR stays. (So the octet count of the output, minus stuffing,
///   equals the message's POP3 size: stored bytes plus one per bare LF.)
/// - Every line that starts with "." gets another "." in front (byte-stuffing).
/// - With `bodyLineLimit`, only the header, the blank line and that many body lines are sent (TOP).
/// - `finish` ends the last line if the message did not, and writes the terminating ".CRLF".
///
/// Chunks may split anywhere, including between CR and LF.
/// - SeeAlso: [RFC 1939 §3](https://www.rfc-editor.org/rfc/rfc1939#section-3) (byte-stuffing), §7 (TOP)
public struct DotStuffer: Sendable {
    private var atLineStart = true
    private var lastByteWasCR = false
    private var inHeader = true
    private var bodyLinesLeft: UInt64?
    private var currentLineIsBlank = true
    /// True once TOP's limit is reached: further input is ignored.
    public private(set) var isComplete = false

    public init(bodyLineLimit: UInt32? = nil) {
        // With a limit of 0, TOP still sends the header and the blank line after it.
        self.bodyLinesLeft = bodyLineLimit.map(UInt64.init)
    }

    /// Encodes one chunk of stored bytes into `out`.
    public mutating func encode(_ chunk: ByteBuffer, into out: inout ByteBuffer) {
        chunk.withUnsafeReadableBytes { raw in
            self.encode(raw, into: &out)
        }
    }

    public mutating func encode(_ raw: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        guard !self.isComplete, raw.count > 0 else { return }
        out.reserveCapacity(minimumWritableBytes: raw.count + raw.count / 16 + 8)
        var start = 0
        let count = raw.count
        let base = raw.baseAddress!
        while start < count && !self.isComplete {
            if self.atLineStart {
                if base.load(fromByteOffset: start, as: UInt8.self) == UInt8(ascii: ".") {
                    out.writeInteger(UInt8(ascii: "."))
                }
                self.atLineStart = false
                self.currentLineIsBlank = true
            }
            // Find the end of this line in the chunk.
            let remaining = count - start
            guard let lfPointer = memchr(base + start, Int32(UInt8(ascii: "\n")), remaining) else {
                // No LF: the line continues in the next chunk.
                let segment = UnsafeRawBufferPointer(start: base + start, count: remaining)
                self.noteLineContent(segment)
                out.writeBytes(segment)
                self.lastByteWasCR = segment.last == UInt8(ascii: "\r")
                start = count
                break
            }
            let lf = UnsafeRawPointer(lfPointer) - base
            let segment = UnsafeRawBufferPointer(start: base + start, count: lf - start)
            self.noteLineContent(segment)
            let crBeforeLF = segment.isEmpty ? self.lastByteWasCR : segment.last == UInt8(ascii: "\r")
            out.writeBytes(segment)
            if crBeforeLF {
                out.writeInteger(UInt8(ascii: "\n"))
            } else {
                out.writeStaticString("\r\n")
            }
            self.lastByteWasCR = false
            self.atLineStart = true
            self.endOfLine()
            start = lf + 1
        }
    }

    /// Ends the response: completes an unterminated last line and writes ".CRLF".
    public mutating func finish(into out: inout ByteBuffer) {
        if !self.atLineStart && !self.isComplete {
            out.writeStaticString("\r\n")
        }
        out.writeStaticString(".\r\n")
        self.isComplete = true
    }

    private mutating func noteLineContent(_ segment: UnsafeRawBufferPointer) {
        guard self.currentLineIsBlank, !segment.isEmpty else { return }
        // A line holding only "\r" is still blank.
        if segment.count == 1 && segment[0] == UInt8(ascii: "\r") && !self.lastByteWasCR { return }
        self.currentLineIsBlank = false
    }

    private mutating func endOfLine() {
        guard let left = self.bodyLinesLeft else { return }
        if self.inHeader {
            if self.currentLineIsBlank {
                self.inHeader = false
                if left == 0 { self.isComplete = true }
            }
        } else {
            self.bodyLinesLeft = left - 1
            if left - 1 == 0 { self.isComplete = true }
        }
    }
}

/// The POP3 size of stored bytes: the byte count plus one for every LF not preceded by CR.
public struct POP3SizeCounter: Sendable {
    public private(set) var size = 0
    private var lastByteWasCR = false

    public init() {}

    public mutating func count(_ bytes: some Sequence<UInt8>) {
        for byte in bytes {
            self.size += 1
            if byte == UInt8(ascii: "\n") && !self.lastByteWasCR { self.size += 1 }
            self.lastByteWasCR = byte == UInt8(ascii: "\r")
        }
    }
}
