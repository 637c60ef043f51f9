import NIOCore

/// What a ClientHello says about the server the client wants.
public struct ClientHelloSummary: Sendable, Equatable {
    /// The SNI host name, if the client sent one.
    public var serverName: String?
    /// The ALPN protocol list, if the client sent the extension.
    public var applicationProtocols: [String]?

    public init(serverName: String? = nil, applicationProtocols: [String]? = nil) {
        self.serverName = serverName
        self.applicationProtocols = applicationProtocols
    }
}

/// Reads the SNI name and ALPN list out of a TLS ClientHello (no I/O; used by the server's ClientHello guard).
public enum ClientHelloParser {
    public enum ParseResult: Equatable, Sendable { case needMoreData, notAClientHello, clientHello(ClientHelloSummary) }

    /// Parses a ClientHello from the start of a TLS byte stream (possibly spread over several handshake records).
    /// - SeeAlso: [RFC 8446 §4.1.2](https://www.rfc-editor.org/rfc/rfc8446#section-4.1.2)
    public static func parse(_ stream: ByteBuffer, maximumBytes: Int = 4 * (16_384 + 5)) -> ParseResult {
        var records = stream
        var handshake = ByteBuffer()
        // Reassemble handshake-record payloads until the ClientHello message is complete.
        while true {
            guard let header = records.readBytes(length: 5) else { return .needMoreData }
            guard header[0] == 22, header[1] == 3 else { return .notAClientHello }
            let length = Int(header[3]) << 8 | Int(header[4])
            guard length > 0, length <= 16_384 + 2048 else { return .notAClientHello }
            guard var payload = records.readSlice(length: length) else { return .needMoreData }
            handshake.writeBuffer(&payload)
            guard handshake.readableBytes >= 4 else { continue }
            let bytes = handshake.readableBytesView
            guard bytes[bytes.startIndex] == 1 else { return .notAClientHello }
            let messageLength = Int(bytes[bytes.startIndex + 1]) << 16 | Int(bytes[bytes.startIndex + 2]) << 8 | Int(bytes[bytes.startIndex + 3])
            guard messageLength <= maximumBytes else { return .notAClientHello }
            if handshake.readableBytes >= 4 + messageLength {
                handshake.moveReaderIndex(forwardBy: 4)
                guard var body = handshake.readSlice(length: messageLength), let summary = Self.parseBody(&body) else {
                    return .notAClientHello
                }
                return .clientHello(summary)
            }
        }
    }

    private static func parseBody(_ body: inout ByteBuffer) -> ClientHelloSummary? {
        // legacy_version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2> compression_methods<1..2^8-1>
        guard body.readSlice(length: 34) != nil,
            let sessionIDLength = body.readInteger(as: UInt8.self), body.readSlice(length: Int(sessionIDLength)) != nil,
            let suitesLength = body.readInteger(as: UInt16.self), body.readSlice(length: Int(suitesLength)) != nil,
            let compressionLength = body.readInteger(as: UInt8.self), body.readSlice(length: Int(compressionLength)) != nil
        else { return nil }
        var summary = ClientHelloSummary()
        guard body.readableBytes > 0 else { return summary }  // no extensions at all
        guard let extensionsLength = body.readInteger(as: UInt16.self), var extensions = body.readSlice(length: Int(extensionsLength))
        else { return nil }
        while extensions.readableBytes > 0 {
            guard let type = extensions.readInteger(as: UInt16.self), let length = extensions.readInteger(as: UInt16.self),
                var data = extensions.readSlice(length: Int(length))
            else { return nil }
            switch type {
            case 0:  // server_name (RFC 6066 §3)
                guard let listLength = data.readInteger(as: UInt16.self), var list = data.readSlice(length: Int(listLength)) else { return nil }
                while list.readableBytes > 0 {
                    guard let nameType = list.readInteger(as: UInt8.self), let nameLength = list.readInteger(as: UInt16.self),
                        let name = list.readBytes(length: Int(nameLength))
                    else { return nil }
                    if nameType == 0 {
                        guard let text = String(validating: name, as: UTF8.self) else { return nil }
                        summary.serverName = text
                    }
                }
            case 16:  // application_layer_protocol_negotiation (RFC 7301 §3.1)
                guard let listLength = data.readInteger(as: UInt16.self), var list = data.readSlice(length: Int(listLength)) else { return nil }
                var protocols: [String] = []
                while list.readableBytes > 0 {
                    guard let nameLength = list.readInteger(as: UInt8.self), let name = list.readBytes(length: Int(nameLength)) else { return nil }
                    protocols.append(String(decoding: name, as: UTF8.self))
                }
                summary.applicationProtocols = protocols
            default:
                break
            }
        }
        return summary
    }
}
