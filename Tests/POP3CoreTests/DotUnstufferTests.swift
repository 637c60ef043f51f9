import NIOCore
import Testing

@testable import POP3Core

@Suite struct DotUnstufferTests {
    /// stuff → unstuff round trip, every split, over every short string of {a . CR LF}.
    @Test func invertsTheStufferExhaustively() {
        let alphabet: [UInt8] = [UInt8(ascii: "a"), UInt8(ascii: "."), 13, 10]
        for length in 0...6 {
            var indices = [Int](repeating: 0, count: length)
            while true {
                let input = indices.map { alphabet[$0] }
                let wire = stuff([input]) + Array("+OK next\r\n".utf8)
                // What the stuffer sends minus the terminator, as the unstuffer must return it.
                let expectedBody = Array(referenceStuff(input).dropLast(3)).unstuffedReference()
                for split in 0...wire.count {
                    var unstuffer = DotUnstuffer()
                    var out = ByteBuffer()
                    var a = ByteBuffer(bytes: wire[..<split])
                    var done = unstuffer.decode(&a, into: &out)
                    var rest = a
                    if !done {
                        var b = ByteBuffer(bytes: wire[split...])
                        done = unstuffer.decode(&b, into: &out)
                        rest = b
                    } else {
                        rest.writeBytes(wire[split...])
                    }
                    #expect(done)
                    #expect(Array(out.readableBytesView) == expectedBody, "input \(input) split \(split)")
                    #expect(String(buffer: rest) == "+OK next\r\n")
                    if Array(out.readableBytesView) != expectedBody { return }
                }
                var position = length - 1
                while position >= 0 {
                    indices[position] += 1
                    if indices[position] < alphabet.count { break }
                    indices[position] = 0
                    position -= 1
                }
                if position < 0 { break }
            }
        }
    }

    @Test func connectionEndingMidMessageIsNotComplete() {
        var unstuffer = DotUnstuffer()
        var out = ByteBuffer()
        var input = ByteBuffer(string: "Subject: x\r\n\r\nbody\r\n")
        #expect(!unstuffer.decode(&input, into: &out))
        var lfOnly = ByteBuffer(string: "\n.\n")
        #expect(!unstuffer.decode(&lfOnly, into: &out), "a bare-LF terminator does not end the message")
    }

    @Test func statusLines() throws {
        #expect(try ServerStatusLine.parse(Array("+OK 2 320".utf8)) == .init(kind: .ok, code: nil, text: "2 320"))
        #expect(try ServerStatusLine.parse(Array("-ERR [IN-USE] locked".utf8)) == .init(kind: .err, code: .inUse, text: "locked"))
        // Codes are the ResponseCode enum (case-insensitive); one this product does not know stays in the text.
        #expect(try ServerStatusLine.parse(Array("-ERR [sys/temp] later".utf8)) == .init(kind: .err, code: .sysTemp, text: "later"))
        #expect(try ServerStatusLine.parse(Array("-ERR [X-FOO/BAR] no".utf8)) == .init(kind: .err, code: nil, text: "[X-FOO/BAR] no"))
        #expect(try ServerStatusLine.parse(Array("+OK".utf8)) == .init(kind: .ok, code: nil, text: ""))
        #expect(try ServerStatusLine.parse(Array("+ ".utf8)).kind == .continuation)
        #expect(try ServerStatusLine.parse(Array("-ERR \u{1B}[31mred".utf8)).text == "?[31mred")
        #expect(throws: ServerStatusLine.ParseError.notAStatusLine) { try ServerStatusLine.parse(Array("+OKAY".utf8)) }
        #expect(throws: ServerStatusLine.ParseError.notAStatusLine) { try ServerStatusLine.parse(Array("* OK imap".utf8)) }
        #expect(throws: ServerStatusLine.ParseError.lineTooLong(maximum: 512)) {
            try ServerStatusLine.parse(Array(("+OK " + String(repeating: "x", count: 600)).utf8))
        }
    }
}

extension Array where Element == UInt8 {
    /// Reference un-stuffing of a stuffed body (CRLF lines): drop one leading dot per line.
    func unstuffedReference() -> [UInt8] {
        var out: [UInt8] = []
        var atLineStart = true
        var i = 0
        while i < self.count {
            if atLineStart && self[i] == UInt8(ascii: ".") {
                i += 1
                atLineStart = false
                continue
            }
            out.append(self[i])
            atLineStart = self[i] == 10 && i > 0 && self[i - 1] == 13
            i += 1
        }
        return out
    }
}
