import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// A DNS failure: no answer, an error code, a malformed message.
public struct DNSError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A DNS query over UDP, and the SRV and MX records of its answer (RFC 1035, RFC 2782), by hand: no resolver
/// library here asks a given server for SRV records.
public enum DNSQuery {
    public static func ask(server: (host: String, port: Int), id: UInt16, name: String, type: UInt16, timeoutSeconds: Int) throws -> [UInt8] {
        var query: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count < 64 else { throw DNSError("not a DNS name: \(name)") }
            query.append(UInt8(bytes.count))
            query += bytes
        }
        query += [0, UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
        let address = try SocketAddress(ipAddress: server.host, port: server.port)
        let fd = socket(Int32(address.protocol.rawValue), Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DNSError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard address.withSockAddr({ connect(fd, $0, socklen_t($1)) }) == 0, send(fd, query, query.count, 0) == query.count else {
            throw DNSError("cannot ask \(server.host):\(server.port): \(String(cString: strerror(errno)))")
        }
        var reply = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &reply, reply.count, 0)
        guard count > 0 else { throw DNSError("no answer from \(server.host):\(server.port)") }
        return Array(reply[0..<count])
    }

    public struct SRV: Equatable, Sendable {
        public var priority: Int
        public var weight: Int
        public var port: Int
        public var target: String
    }

    public struct MX: Equatable, Sendable {
        public var preference: Int
        public var exchange: String
    }

    /// The MX records of an answer (RFC 1035 §3.3.9).
    public static func mxRecords(_ reply: [UInt8], id: UInt16) throws -> [MX] {
        try Self.records(reply, id: id, type: 15).filter { $0.length >= 3 }.map { offset, _ in
            var at = offset + 2
            return MX(preference: Int(reply[offset]) << 8 | Int(reply[offset + 1]), exchange: try Self.name(reply, at: &at))
        }
    }

    public static func srvRecords(_ reply: [UInt8], id: UInt16) throws -> [SRV] {
        try Self.records(reply, id: id, type: 33).filter { $0.length >= 7 }.map { offset, _ in
            var at = offset + 6
            return SRV(
                priority: Int(reply[offset]) << 8 | Int(reply[offset + 1]),
                weight: Int(reply[offset + 2]) << 8 | Int(reply[offset + 3]),
                port: Int(reply[offset + 4]) << 8 | Int(reply[offset + 5]),
                target: try Self.name(reply, at: &at)
            )
        }
    }

    /// Where each answer record of `type` starts in the message, and its length.
    static func records(_ reply: [UInt8], id: UInt16, type wanted: Int) throws -> [(offset: Int, length: Int)] {
        guard reply.count >= 12, UInt16(reply[0]) << 8 | UInt16(reply[1]) == id else { throw DNSError("a DNS answer to another question") }
        let rcode = reply[3] & 0x0F
        if rcode == 3 { return [] }  // NXDOMAIN
        guard rcode == 0 else { throw DNSError("DNS error \(rcode)") }
        let questions = Int(reply[4]) << 8 | Int(reply[5])
        let answers = Int(reply[6]) << 8 | Int(reply[7])
        var offset = 12
        for _ in 0..<questions {
            _ = try Self.name(reply, at: &offset)
            offset += 4
        }
        var out: [(offset: Int, length: Int)] = []
        for _ in 0..<answers {
            _ = try Self.name(reply, at: &offset)
            guard offset + 10 <= reply.count else { throw DNSError("a truncated DNS answer") }
            let type = Int(reply[offset]) << 8 | Int(reply[offset + 1])
            let length = Int(reply[offset + 8]) << 8 | Int(reply[offset + 9])
            offset += 10
            guard offset + length <= reply.count else { throw DNSError("a truncated DNS answer") }
            if type == wanted { out.append((offset, length)) }
            offset += length
        }
        return out
    }

    /// A (possibly compressed) name at `offset`, which moves past it.
    public static func name(_ message: [UInt8], at offset: inout Int) throws -> String {
        var labels: [String] = []
        var position = offset
        var jumped = false
        for _ in 0..<128 {
            guard position < message.count else { throw DNSError("a truncated DNS name") }
            let length = Int(message[position])
            if length == 0 {
                if !jumped { offset = position + 1 }
                return labels.isEmpty ? "." : labels.joined(separator: ".")
            }
            if length & 0xC0 == 0xC0 {
                guard position + 1 < message.count else { throw DNSError("a truncated DNS name") }
                if !jumped { offset = position + 2 }
                jumped = true
                position = (length & 0x3F) << 8 | Int(message[position + 1])
                continue
            }
            guard position + 1 + length <= message.count else { throw DNSError("a truncated DNS name") }
            labels.append(String(decoding: message[(position + 1)...(position + length)], as: UTF8.self))
            position += 1 + length
        }
        throw DNSError("a DNS name that loops")
    }
}

extension DNSQuery {
    /// The resolver: `HOST:PORT` when given, else the first nameserver of /etc/resolv.conf on port 53.
    public static func resolver(_ given: String?) throws -> (host: String, port: Int) {
        if let text = given {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
                throw DNSError("a DNS server is HOST:PORT, got \(text)")
            }
            return (String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
        }
        let conf = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? ""
        for line in conf.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2, parts[0] == "nameserver" { return (String(parts[1]), 53) }
        }
        throw DNSError("no nameserver in /etc/resolv.conf")
    }

    /// SRV records of `name` (a target of "." means "not offered" and is left out), by priority then weight.
    public static func srv(_ name: String, server: String?) throws -> [SRV] {
        let id = UInt16.random(in: 0...UInt16.max)
        let reply = try Self.ask(server: try Self.resolver(server), id: id, name: name, type: 33, timeoutSeconds: 5)
        return try Self.srvRecords(reply, id: id).filter { $0.target != "." && !$0.target.isEmpty }
            .sorted { ($0.priority, -$0.weight) < ($1.priority, -$1.weight) }
    }

    public static func mx(_ name: String, server: String?) throws -> [MX] {
        let id = UInt16.random(in: 0...UInt16.max)
        let reply = try Self.ask(server: try Self.resolver(server), id: id, name: name, type: 15, timeoutSeconds: 5)
        return try Self.mxRecords(reply, id: id).sorted { $0.preference < $1.preference }
    }
}
