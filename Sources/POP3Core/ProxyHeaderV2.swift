import NIOCore

/// A PROXY protocol v2 header, as HAProxy sends it (`send-proxy-v2`).
/// - SeeAlso: [The PROXY protocol, §2.2](https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt)
public struct ProxyHeaderV2: Sendable, Equatable {
    /// The client's address as the proxy saw it; nil for a LOCAL command (health checks) or UNSPEC family.
    public var source: SocketAddress?
    public var destination: SocketAddress?

    public init(source: SocketAddress?, destination: SocketAddress?) {
        self.source = source
        self.destination = destination
    }

    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// Longest address block accepted (addresses plus TLVs). HAProxy's TLVs fit easily.
    public static let maximumPayloadLength = 1_024

    public enum ParseError: Error, Sendable, Equatable {
        case notAProxyHeader
        case unsupportedVersion
        case unsupportedCommand
        case payloadTooLong(Int)
        case truncatedAddresses
    }

    /// Parses a header at the start of `buffer`; nil if more bytes are needed. Consumes the header on success.
    public static func parse(_ buffer: inout ByteBuffer) throws(ParseError) -> ProxyHeaderV2? {
        let available = buffer.readableBytes
        let prefix = buffer.getBytes(at: buffer.readerIndex, length: min(available, 12)) ?? []
        guard prefix == Array(self.signature.prefix(prefix.count)) else { throw .notAProxyHeader }
        guard available >= 16, let fixed = buffer.getBytes(at: buffer.readerIndex + 12, length: 4) else { return nil }
        guard fixed[0] >> 4 == 2 else { throw .unsupportedVersion }
        let command = fixed[0] & 0x0F
        guard command <= 1 else { throw .unsupportedCommand }
        let length = Int(fixed[2]) << 8 | Int(fixed[3])
        guard length <= self.maximumPayloadLength else { throw .payloadTooLong(length) }
        guard available >= 16 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 16)
        var payload = buffer.readSlice(length: length)!
        guard command == 1 else { return ProxyHeaderV2(source: nil, destination: nil) }  // LOCAL
        switch fixed[1] >> 4 {
        case 1:  // AF_INET
            guard let src = payload.readBytes(length: 4), let dst = payload.readBytes(length: 4),
                let sport = payload.readInteger(as: UInt16.self), let dport = payload.readInteger(as: UInt16.self)
            else { throw .truncatedAddresses }
            return ProxyHeaderV2(source: Self.address(src, Int(sport)), destination: Self.address(dst, Int(dport)))
        case 2:  // AF_INET6
            guard let src = payload.readBytes(length: 16), let dst = payload.readBytes(length: 16),
                let sport = payload.readInteger(as: UInt16.self), let dport = payload.readInteger(as: UInt16.self)
            else { throw .truncatedAddresses }
            return ProxyHeaderV2(source: Self.address(src, Int(sport)), destination: Self.address(dst, Int(dport)))
        default:
            return ProxyHeaderV2(source: nil, destination: nil)
        }
    }

    static func address(_ bytes: [UInt8], _ port: Int) -> SocketAddress? {
        let text: String
        if bytes.count == 4 {
            text = bytes.map(String.init).joined(separator: ".")
        } else {
            text = stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
        }
        return try? SocketAddress(ipAddress: text, port: port)
    }
}

