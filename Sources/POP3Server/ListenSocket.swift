import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A listening socket bound before the server starts, so that a server started as root can bind 995/110 and
/// drop root on the main thread before any connection is accepted.
public struct PreboundListener: Sendable {
    public let kind: ListenerKind
    public let address: ListenAddress
    public let descriptor: CInt
}

public enum ListenSocket {
    public static let backlog: CInt = 1024

    /// Binds every listener of the configuration (blocking; call before starting the server).
    public static func bindAll(_ configuration: ServerConfiguration) throws -> [PreboundListener] {
        var bound: [PreboundListener] = []
        do {
            for address in configuration.pop3sListeners { bound.append(.init(kind: .pop3s, address: address, descriptor: try self.bind(address, key: "listen.pop3s"))) }
            for address in configuration.pop3Listeners { bound.append(.init(kind: .pop3, address: address, descriptor: try self.bind(address, key: "listen.pop3"))) }
        } catch {
            for listener in bound { close(listener.descriptor) }
            throw error
        }
        return bound
    }

    static func bind(_ target: ListenAddress, key: String) throws -> CInt {
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
        } catch {
            throw ConfigurationError(key: key, "cannot resolve \(target): \(error)")
        }
        let family = address.protocol.rawValue
        let fd = socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw ConfigurationError(key: key, "socket(): \(String(cString: strerror(errno)))") }
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        if case .v6 = address {
            // "[::]:995" means IPv6 only; list "0.0.0.0:995" as well for IPv4.
            setsockopt(fd, CInt(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<CInt>.size))
        }
        let result = address.withSockAddr { pointer, size in Glibc.bind(fd, pointer, socklen_t(size)) }
        guard result == 0, Glibc.listen(fd, Self.backlog) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ConfigurationError(key: key, "cannot listen on \(target): \(reason)")
        }
        return fd
    }
}
