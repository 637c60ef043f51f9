import Accounts
import CPrivSep
import Logging
import MailStore
import NIOPosix
import POP3Core
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// pop3d's connection to its privileged helper.
public final class PrivilegedHelper: Sendable {
    private let socket: Mutex<Int32>
    public let pid: pid_t

    private init(socket: Int32, pid: pid_t) {
        self.socket = Mutex(socket)
        self.pid = pid
    }

    /// Starts `pop3d privsep` (call while still root, before dropping privileges).
    public static func launch(executable: String, passwdFile: String, firstValidUID: UInt32) throws -> PrivilegedHelper {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw PrivilegeSeparation.HelperError(description: "socketpair: \(String(cString: strerror(errno)))")
        }
        let arguments = [executable, "privsep", "--passwd-file", passwdFile, "--first-valid-uid", String(firstValidUID)]
        let pid = PrivilegeSeparation.withCStrings(arguments) { argv in
            pop3_spawn(PrivilegeSeparation.ownExecutable, argv, 0, 0, 0, pair[1])
        }
        close(pair[1])
        guard pid > 0 else {
            close(pair[0])
            throw PrivilegeSeparation.HelperError(description: "cannot start the privileged helper: \(String(cString: strerror(errno)))")
        }
        return PrivilegedHelper(socket: pair[0], pid: pid)
    }

    /// Asks for a worker running as `owner` for `user` (blocking: call on a thread pool). Returns pop3d's end of
    /// the worker's socket.
    public func startWorker(user: String, owner: MailOwner) throws -> Int32 {
        try self.socket.withLock { socket throws -> Int32 in
            guard socket >= 0 else { throw PrivilegeSeparation.HelperError(description: "privileged helper closed") }
            let request = Array("\(owner.uid) \(owner.gid) \(user)".utf8)
            guard request.count <= PrivilegeSeparation.maximumMessageLength else {
                throw PrivilegeSeparation.HelperError(description: "user name too long for the privileged helper")
            }
            let sent = request.withUnsafeBytes { pop3_send_with_fd(socket, $0.baseAddress, $0.count, -1) }
            guard sent == request.count else {
                throw PrivilegeSeparation.HelperError(description: "privileged helper gone: \(String(cString: strerror(errno)))")
            }
            var reply = [UInt8](repeating: 0, count: PrivilegeSeparation.maximumMessageLength)
            var descriptor: Int32 = -1
            let count = reply.withUnsafeMutableBytes { pop3_receive_with_fd(socket, $0.baseAddress, $0.count, &descriptor) }
            guard count > 0 else { throw PrivilegeSeparation.HelperError(description: "privileged helper gone") }
            let text = String(decoding: reply[0..<count], as: UTF8.self)
            guard text == "ok", descriptor >= 0 else {
                if descriptor >= 0 { close(descriptor) }
                throw PrivilegeSeparation.HelperError(description: "privileged helper: \(text)")
            }
            return descriptor
        }
    }

    /// Closes the connection: the helper exits.
    public func shutdown() {
        self.socket.withLock { socket in
            if socket >= 0 { close(socket) }
            socket = -1
        }
    }

    deinit {
        self.shutdown()
    }
}
