import NIOCore
import Testing

@testable import POP3Core

/// The obvious, slow definition the streaming stuffer must agree with.
func referenceStuff(_ input: [UInt8], bodyLineLimit: UInt32? = nil) -> [UInt8] {
    // Split into lines at LF; normalise the line break to CRLF (a CR right before LF belongs to the break).
    var lines: [[UInt8]] = []
    var current: [UInt8] = []
    for byte in input {
        if byte == UInt8(ascii: "\n") {
            if current.last == UInt8(ascii: "\r") { current.removeLast() }
            lines.append(current)
            current = []
        } else {
            current.append(byte)
        }
    }
    let unterminated = current.isEmpty ? nil : current
    var selected: [[UInt8]] = []
    var partial = unterminated
    if let limit = bodyLineLimit {
        var inHeader = true
        var left = Int(limit)
        var done = false
        for line in lines {
            if done { break }
            selected.append(line)
            if inHeader {
                if line.isEmpty {
                    inHeader = false
                    if left == 0 { done = true }
                }
            } else {
                left -= 1
                if left == 0 { done = true }
            }
        }
        if done { partial = nil }
    } else {
        selected = lines
    }
    var out: [UInt8] = []
    for line in selected + (partial.map { [$0] } ?? []) {
        if line.first == UInt8(ascii: ".") { out.append(UInt8(ascii: ".")) }
        out += line
        out += [13, 10]
    }
    out += Array(".\r\n".utf8)
    return out
}

func stuff(_ chunks: [[UInt8]], bodyLineLimit: UInt32? = nil) -> [UInt8] {
    var stuffer = DotStuffer(bodyLineLimit: bodyLineLimit)
    var out = ByteBuffer()
    for chunk in chunks {
        stuffer.encode(ByteBuffer(bytes: chunk), into: &out)
    }
    stuffer.finish(into: &out)
    return Array(out.readableBytesView)
}

@Suite struct DotStufferTests {
    /// Every string up to length 7 over {a . CR LF}, split at every position (Stalwart's exhaustive check).
    @Test func agreesWithReferenceExhaustively() {
        let alphabet: [UInt8] = [UInt8(ascii: "a"), UInt8(ascii: "."), 13, 10]
        var checked = 0
        for length in 0...7 {
            var indices = [Int](repeating: 0, count: length)
            while true {
                let input = indices.map { alphabet[$0] }
                let expected = referenceStuff(input)
                for split in 0...input.count {
                    let got = stuff([Array(input[..<split]), Array(input[split...])])
                    if got != expected {
                        Issue.record("input \(input) split \(split): got \(got), expected \(expected)")
                        return
                    }
                    checked += 1
                }
                // next combination
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
        #expect(checked > 100_000)
    }

    @Test func byteByByteMatchesWhole() {
        let input = Array("From: a\r\nSubject: b\n\n.hidden\r\n..two\nlast line no newline".utf8)
        #expect(stuff(input.map { [$0] }) == stuff([input]))
        #expect(stuff([input]) == referenceStuff(input))
    }

    @Test(arguments: [0, 1, 2, 5] as [UInt32])
    func topAgreesWithReference(lines: UInt32) {
        let input = Array("H1: x\nH2: y\n\nbody1\n.body2\r\nbody3\nbody4".utf8)
        for split in 0...input.count {
            #expect(stuff([Array(input[..<split]), Array(input[split...])], bodyLineLimit: lines) == referenceStuff(input, bodyLineLimit: lines))
        }
    }

    @Test func topZeroSendsHeaderAndBlankLine() {
        #expect(stuff([Array("A: 1\r\n\r\nbody\r\n".utf8)], bodyLineLimit: 0) == Array("A: 1\r\n\r\n.\r\n".utf8))
    }

    @Test func sizeCounterMatchesStuffedOutputWithoutStuffing() {
        let samples = ["a\nb\n", "a\r\nb\r\n", "\n\n", "x\ry\n", "no newline", ".a\n"]
        for sample in samples {
            var counter = POP3SizeCounter()
            counter.count(Array(sample.utf8))
            let stuffed = stuff([Array(sample.utf8)])
            let bytes = Array(sample.utf8)
            let dots = bytes.split(separator: 10, omittingEmptySubsequences: false).filter { $0.first == UInt8(ascii: ".") }.count
            let unterminated = bytes.last != 10 ? 2 : 0
            #expect(counter.size == stuffed.count - 3 - dots - unterminated, "\(sample.debugDescription)")
        }
    }
}
