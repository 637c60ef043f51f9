import NIOCore
import ServiceLifecycle

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

/// An LMTP listening socket bound before the server starts (a Unix socket is created with its mode).
public struct PreboundLMTPListener: Sendable {
    public let address: LMTPListenAddress
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

    /// Binds every `listen.lmtp` entry (blocking; before the server starts and before root is dropped).
    public static func bindLMTP(_ configuration: ServerConfiguration) throws -> [PreboundLMTPListener] {
        var bound: [PreboundLMTPListener] = []
        do {
            for address in configuration.lmtp.listeners {
                switch address {
                case .tcp(let tcp):
                    bound.append(.init(address: address, descriptor: try self.bind(tcp, key: "listen.lmtp")))
                case .unix(let path):
                    bound.append(.init(address: address, descriptor: try self.bindUnix(path, mode: mode_t(configuration.lmtp.socketMode))))
                }
            }
        } catch {
            for listener in bound { close(listener.descriptor) }
            throw error
        }
        return bound
    }

    /// A Unix stream socket at `path` with `mode`. A stale socket (nobody accepts on it) is replaced; a live one, or
    /// anything that is not a socket, is an error: another server's socket or an operator's file is never removed.
    static func bindUnix(_ path: String, mode: mode_t, key: String = "listen.lmtp") throws -> CInt {
        let address: SocketAddress
        do {
            address = try SocketAddress(unixDomainSocketPath: path)
        } catch {
            throw ConfigurationError(key: key, "unix:\(path): \(error)")
        }
        var status = stat()
        if lstat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFSOCK else {
                throw ConfigurationError(key: key, "unix:\(path) exists and is not a socket; not replacing it")
            }
            let probe = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
            let live = address.withSockAddr { pointer, size in connect(probe, pointer, socklen_t(size)) } == 0
            close(probe)
            if live { throw ConfigurationError(key: key, "unix:\(path) is in use by another process") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw ConfigurationError(key: key, "socket(): \(String(cString: strerror(errno)))") }
        // Created with its mode at once (bind gives 0777 less the umask): no window in which others could connect,
        // and no chmod by path afterwards that a symlink put in the socket's place could redirect.
        let previous = umask(~mode & 0o777)
        let result = address.withSockAddr { pointer, size in Glibc.bind(fd, pointer, socklen_t(size)) }
        let bindErrno = errno
        umask(previous)
        guard result == 0 else {
            close(fd)
            throw ConfigurationError(key: key, "cannot listen on unix:\(path): \(String(cString: strerror(bindErrno)))")
        }
        guard Glibc.listen(fd, Self.backlog) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            unlink(path)
            throw ConfigurationError(key: key, "cannot listen on unix:\(path): \(reason)")
        }
        return fd
    }
}

/// The part of a server's `run` that POP3 and LMTP share: one accept loop per listener until graceful shutdown,
/// then the listeners closed at once and, after `grace`, every connection still open.
func serveListeners<Listener: Sendable>(
    _ listeners: [Listener],
    serverChannels: [any Channel],
    grace: Duration,
    group: any EventLoopGroup,
    onShutdown: @escaping @Sendable () -> Void = {},
    closeConnections: @escaping @Sendable () -> Void,
    accept: @escaping @Sendable (Listener) async -> Void
) async {
    await withGracefulShutdownHandler {
        await withDiscardingTaskGroup { tasks in
            for listener in listeners {
                tasks.addTask { await accept(listener) }
            }
        }
    } onGracefulShutdown: {
        onShutdown()
        for channel in serverChannels { channel.close(promise: nil) }
        group.any().scheduleTask(in: .seconds(grace.components.seconds)) { closeConnections() }
    }
}

/// An accepted connection whose reading waits (autoRead off) until a session task owns it. The async wrapper is made
/// only then (`wrap`), so a connection accepted while the server shuts down is never a wrapper that nobody finishes
/// (NIO traps on that); its idle timer closes it.
struct AcceptedChannel: Sendable {
    let channel: any Channel

    /// The async wrapper, made on the channel's event loop, with reading turned on.
    func wrap<Inbound: Sendable, Outbound: Sendable>(
        as type: NIOAsyncChannel<Inbound, Outbound>.Type = NIOAsyncChannel<Inbound, Outbound>.self
    ) async throws -> NIOAsyncChannel<Inbound, Outbound> {
        let raw = self.channel
        return try await raw.eventLoop.submit {
            let wrapped = try NIOAsyncChannel<Inbound, Outbound>(wrappingChannelSynchronously: raw)
            raw.setOption(.autoRead, value: true).whenFailure { _ in raw.close(promise: nil) }
            return wrapped
        }.get()
    }
}
