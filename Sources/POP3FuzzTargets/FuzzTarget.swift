import LMTPCore
import NIOCore
import POP3Core
import SASL

/// The code paths fed with arbitrary bytes by `POP3Fuzzer` (libFuzzer) and replayed by the regression tests.
///
/// Each target must never crash, hang or allocate without bound for any input; where two implementations
/// must agree (stuffer and unstuffer), a disagreement is a crash on purpose.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Command lines, one per LF, through the parser and the server state machine.
    case command
    /// Server status lines and multi-line bodies, as the client reads them.
    case response
    /// SASL PLAIN responses, base64, and the server side of SCRAM (client-first, then client-final after a 0 byte).
    case sasl
    /// Byte-unstuffing over arbitrary chunkings, and the stuff → unstuff round trip.
    case dotstuffing
    /// TLS ClientHello parsing (strict ALPN/SNI) and PROXY v2 headers.
    case handshake
    /// An LMTP conversation: the input framer (lines, DATA, BDAT) and the session state machine, fed in pieces.
    case lmtp

    public func run(_ data: [UInt8]) {
        switch self {
        case .command: Self.command(data)
        case .response: Self.response(data)
        case .sasl: Self.sasl(data)
        case .dotstuffing: Self.dotstuffing(data)
        case .handshake: Self.handshake(data)
        case .lmtp: Self.lmtp(data)
        }
    }

    /// Drives the framer and the session as the server does; the first byte picks the piece size. Every transaction
    /// that reaches `deliver` must be answered with one reply per recipient, and content is only ever received when
    /// the session asked for it.
    static func lmtp(_ data: [UInt8]) {
        guard let first = data.first else { return }
        let piece = Int(first % 64) + 1
        var session = LMTPSession(configuration: .init(hostname: "fuzz", maximumMessageSize: 4_096, maximumRecipients: 5, maximumBadCommands: 20))
        var framer = LMTPInputFramer(maximumLineLength: 128)
        var receiving = false
        var octets = 0
        var offset = 1
        func perform(_ actions: [LMTPSession.Action]) -> Bool {
            var queue = actions[...]
            while let action = queue.popFirst() {
                switch action {
                case .reply: break
                case .lookUp(let address): queue.append(contentsOf: session.recipientLookedUp(address.count % 2 == 0 ? "user" : nil))
                case .receiveData:
                    framer.startData()
                    receiving = true
                case .receiveChunk(let size, _):
                    framer.startChunk(size: size)
                    receiving = true
                case .deliver(let transaction):
                    precondition(!transaction.recipients.isEmpty, "a delivery without recipients")
                    let replies = session.delivered(transaction.recipients.map { _ in LMTPReply.delivered })
                    precondition(replies.count == transaction.recipients.count, "not one reply per recipient")
                case .close: return false
                }
            }
            return true
        }
        while offset < data.count {
            let end = min(offset + piece, data.count)
            framer.append(ByteBuffer(bytes: data[offset..<end]))
            offset = end
            while let frame = framer.next() {
                let actions: [LMTPSession.Action]
                switch frame {
                case .line(let line):
                    precondition(!receiving, "a command line while content was expected")
                    actions = session.receive(line: line.readableBytesView)
                case .lineTooLong:
                    actions = session.lineTooLong()
                case .content(let bytes):
                    precondition(receiving, "content nobody asked for")
                    octets += bytes.readableBytes
                    continue
                case .endOfContent:
                    precondition(receiving, "an end of content nobody asked for")
                    receiving = false
                    actions = session.contentEnded(octets: octets, tooLarge: octets > 4_096)
                    octets = 0
                }
                if !perform(actions) { return }
            }
        }
    }

    static func command(_ data: [UInt8]) {
        var configuration = ServerSession.Configuration()
        configuration.stlsAvailable = data.first.map { $0 & 1 == 1 } ?? false
        var session = ServerSession(configuration: configuration, tlsActive: data.first.map { $0 & 2 == 2 } ?? true)
        for line in data.split(separator: 10, omittingEmptySubsequences: false).prefix(200) {
            let action = session.receive(line: ByteBuffer(bytes: line))
            switch action {
            case .login(let user, _):
                // Alternate outcomes so that TRANSACTION commands get exercised too.
                _ = line.count % 2 == 0
                    ? session.loginSucceeded(messages: [MaildropMessage(uniqueID: "a\(user.count)", size: 10), MaildropMessage(uniqueID: "b", size: 20)])
                    : session.loginFailed(.invalidCredentials)
            case .startTLS:
                session.tlsEstablished()
            case .commit:
                _ = session.updateFinished(success: true)
                return
            case .respondAndClose:
                return
            case .respondScanListing(_, let kind):
                var buffer = ByteBuffer()
                session.writeScanListing(kind, into: &buffer)
            default:
                break
            }
        }
    }

    static func response(_ data: [UInt8]) {
        var buffer = ByteBuffer(bytes: data)
        if let lf = data.firstIndex(of: 10) {
            _ = try? ServerStatusLine.parse(data[..<lf])
            buffer.moveReaderIndex(forwardBy: lf + 1)
        }
        var unstuffer = DotUnstuffer()
        var out = ByteBuffer()
        _ = unstuffer.decode(&buffer, into: &out)
        _ = sanitize(data.prefix(600))
        _ = UniqueID(String(decoding: data.prefix(80), as: UTF8.self))
    }

    static func sasl(_ data: [UInt8]) {
        let text = String(decoding: data, as: UTF8.self)
        _ = try? SASLPlainCredentials.decode(response: text)
        if let decoded = Base64.decode(text) {
            precondition(Base64.encode(decoded) == text, "base64 decoding accepted a non-canonical form")
        }
        precondition(Base64.decode(Base64.encode(data)) == data, "base64 round trip")
        // SCRAM as the server sees it: the first byte picks mechanism and binding; a NUL splits client-first from
        // client-final. A proof made without the keys must never verify.
        guard let first = data.first else { return }
        let mechanism: SASLMechanism = first & 1 == 0 ? .scramSHA256 : .scramSHA256Plus
        let binding = first & 2 == 0 ? nil : ChannelBinding(kind: .tlsServerEndPoint, data: [1, 2, 3])
        let parts = data.dropFirst().split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
        var server = SCRAMServerExchange(mechanism: mechanism, channelBinding: binding, plusOffered: first & 4 == 0, serverNonce: "fuzz")
        guard (try? server.receiveClientFirst(Array(parts[0]))) != nil else { return }
        let keys = SCRAMServerExchange.dummyKeys(user: "u", algorithm: .sha256, iterations: 4096, secret: [7])
        _ = server.serverFirst(keys: keys)
        if parts.count > 1 {
            precondition((try? server.receiveClientFinal(Array(parts[1]))) == nil, "a SCRAM proof verified against dummy keys")
        }
    }

    static func dotstuffing(_ data: [UInt8]) {
        guard let first = data.first else { return }
        let body = Array(data.dropFirst())
        // Stuff in chunks of a size picked by the first byte, then unstuff in other chunks: must give back the
        // CRLF-normalised body.
        let chunk = Int(first % 17) + 1
        var stuffer = DotStuffer()
        var wire = ByteBuffer()
        var index = 0
        while index < body.count {
            let end = min(index + chunk, body.count)
            stuffer.encode(ByteBuffer(bytes: body[index..<end]), into: &wire)
            index = end
        }
        stuffer.finish(into: &wire)
        var counter = POP3SizeCounter()
        counter.count(body)
        var unstuffer = DotUnstuffer()
        var out = ByteBuffer()
        let other = Int(first / 17) + 1
        var done = false
        while wire.readableBytes > 0 && !done {
            var piece = wire.readSlice(length: min(other, wire.readableBytes))!
            done = unstuffer.decode(&piece, into: &out)
            precondition(!done || (piece.readableBytes == 0 && wire.readableBytes == 0), "terminator found early")
        }
        precondition(done, "terminator not found")
        let unterminated = !body.isEmpty && body.last != 10 ? 2 : 0
        precondition(out.readableBytes == counter.size + unterminated, "size mismatch: \(out.readableBytes) vs \(counter.size)")
    }

    static func handshake(_ data: [UInt8]) {
        _ = ClientHelloParser.parse(ByteBuffer(bytes: data))
        var buffer = ByteBuffer(bytes: data)
        _ = try? ProxyHeaderV2.parse(&buffer)
        var withSignature = ByteBuffer(bytes: ProxyHeaderV2.signature + data)
        _ = try? ProxyHeaderV2.parse(&withSignature)
    }
}
