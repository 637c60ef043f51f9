import LMTPCore
import NIOCore
import Testing

@Suite struct LMTPInputFramerTests {
    /// Feeds `chunks` one at a time and collects every frame, switching to data mode after a line "DATA" and to
    /// chunk mode after "BDAT n", as the server does once the session says so.
    func frames(_ chunks: [String], maximumLineLength: Int = 1_000) -> [String] {
        var framer = LMTPInputFramer(maximumLineLength: maximumLineLength)
        var out: [String] = []
        var content = ""
        for chunk in chunks {
            framer.append(ByteBuffer(string: chunk))
            while let frame = framer.next() {
                switch frame {
                case .line(let line):
                    let text = String(buffer: line)
                    out.append("line:" + text)
                    if text == "DATA" { framer.startData() }
                    if text.hasPrefix("BDAT "), let size = Int(text.split(separator: " ")[1]) { framer.startChunk(size: size) }
                case .lineTooLong: out.append("too-long")
                case .content(let piece): content += String(buffer: piece)
                case .endOfContent:
                    out.append("content:" + content)
                    content = ""
                }
            }
        }
        return out
    }

    @Test func linesAndDotTerminatedDataWithUnstuffing() {
        #expect(
            frames(["LHLO x\r\nDATA\r\n", "Subject: a\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n"]) == [
                "line:LHLO x", "line:DATA", "content:Subject: a\r\n\r\n.dot\r\nbody\r\n", "line:QUIT",
            ]
        )
    }

    @Test func dataEndsOnlyAtCRLFDotCRLFWhateverTheSplit() {
        // docs/security-cases.md 61: bare-LF and bare-CR dots are content, not the end of the message.
        let message = "DATA\r\na\n.\nMAIL FROM:<x>\r\nb\r.\rc\n.\r\nd\r\n.\r\n"
        let expected = ["line:DATA", "content:a\n.\nMAIL FROM:<x>\r\nb\r.\rc\n.\r\nd\r\n"]
        #expect(frames([message]) == expected)
        // Split at every byte.
        #expect(frames(message.map { String($0) }) == expected)
    }

    @Test func emptyMessage() {
        #expect(frames(["DATA\r\n.\r\n"]) == ["line:DATA", "content:"])
    }

    @Test func bdatReadsExactlyItsSizeAndPipelinedCommandsStayCommands() {
        #expect(frames(["BDAT 5\r\nhel", "loBDAT 2 LAST\r\n\r\nQUIT\r\n"]) == ["line:BDAT 5", "content:hello", "line:BDAT 2 LAST", "content:\r\n", "line:QUIT"])
    }

    @Test func overLongCommandLinesAreSkippedToTheirEnd() {
        let long = String(repeating: "A", count: 50)
        #expect(frames(["NOOP \(long)\r\nQUIT\r\n"], maximumLineLength: 20) == ["too-long", "line:QUIT"])
        // Arriving in pieces, never buffered beyond the limit.
        #expect(frames(["NOOP ", long, long, "\r\nQUIT\r\n"], maximumLineLength: 20) == ["too-long", "line:QUIT"])
    }

    @Test func longContentLinesAreAccepted() {
        let long = String(repeating: "x", count: 5_000)
        #expect(frames(["DATA\r\n", long + "\r\n.\r\n"], maximumLineLength: 100) == ["line:DATA", "content:" + long + "\r\n"])
    }

    @Test func lineEndingNormalizerTurnsCRLFIntoLFAcrossPieces() {
        var normalizer = LineEndingNormalizer()
        var out = ByteBuffer()
        for piece in ["a\r", "\nb\r", "c\r\n\r", "\r\n"] { normalizer.normalize(ByteBuffer(string: piece), into: &out) }
        normalizer.finish(into: &out)
        #expect(String(buffer: out) == "a\nb\rc\n\r\n")
        var trailing = LineEndingNormalizer()
        var end = ByteBuffer()
        trailing.normalize(ByteBuffer(string: "z\r"), into: &end)
        trailing.finish(into: &end)
        #expect(String(buffer: end) == "z\r")
    }
}
