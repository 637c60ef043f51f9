import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// sd_notify(3) by hand: one datagram of `KEY=VALUE` lines to the socket systemd names in `$NOTIFY_SOCKET` (a path,
/// or `@name` for the abstract namespace). With `Type=notify` in pop3d.service: READY=1 once every listener is
/// bound, RELOADING=1 … READY=1 around a SIGHUP reload, STOPPING=1 when shutdown begins. Without `$NOTIFY_SOCKET`
/// (not started by systemd) every call does nothing.
public final class SystemdNotifier: Sendable {
    let address: String

    /// Reads `$NOTIFY_SOCKET` and removes it from the environment, so that processes pop3d starts (the privileged
    /// helper, mail workers) do not speak for it. Nil when systemd did not set it.
    public static func fromEnvironment() -> SystemdNotifier? {
        guard let value = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !value.isEmpty else { return nil }
        unsetenv("NOTIFY_SOCKET")
        guard value.hasPrefix("/") || value.hasPrefix("@") else { return nil }
        return SystemdNotifier(address: value)
    }

    init(address: String) { self.address = address }

    /// Sends `state` (e.g. "READY=1\nSTATUS=serving"); returns whether the datagram was sent.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        var path = Array(self.address.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }  // abstract namespace
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        let bytes = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), socketAddress, length) }
            }
        }
        return sent == bytes.count
    }

    /// `MONOTONIC_USEC=` of now, which systemd wants with RELOADING=1.
    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }

    public func ready(_ status: String) { self.notify("READY=1\nSTATUS=\(status)") }
    public func reloading() { self.notify("RELOADING=1\nMONOTONIC_USEC=\(Self.monotonicMicroseconds())") }
    public func stopping() { self.notify("STOPPING=1\nSTATUS=shutting down") }
}
