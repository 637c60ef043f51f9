import Accounts
import Foundation
import MailStore

#if canImport(Glibc)
import Glibc
#endif

/// Dropping root after binding ports (DESIGN, "Privileges").
///
/// Started as root, `pop3d serve` binds its ports and reads its certificates, then runs as the configured
/// `user`/`group`; with none configured, as the uid/gid that every passwd-file entry shares (the virtual-mail
/// owner, like Dovecot's vmail). If entries differ or give none, it refuses to start and says why. Not started
/// as root: nothing changes.
public enum PrivilegeDrop {
    /// A uid:gid to run as: the same pair that owns an account's mail.
    public typealias Identity = MailOwner

    public struct Failure: Error, CustomStringConvertible {
        public var description: String

        public init(description: String) {
            self.description = description
        }
    }

    /// Who to become, or nil when not running as root.
    public static func target(user: String?, group: String?, records: [UserRecord], isRoot: Bool = geteuid() == 0) throws -> Identity? {
        guard isRoot else { return nil }
        if let user {
            guard let entry = getpwnam(user) else { throw Failure(description: "user: no such system user \"\(user)\"") }
            var gid = entry.pointee.pw_gid
            if let group {
                guard let groupEntry = getgrnam(group) else { throw Failure(description: "group: no such system group \"\(group)\"") }
                gid = groupEntry.pointee.gr_gid
            }
            guard entry.pointee.pw_uid != 0 else { throw Failure(description: "user: \"\(user)\" is root; name an unprivileged user") }
            return Identity(uid: entry.pointee.pw_uid, gid: gid)
        }
        let pairs = Set(records.map { "\($0.uid.map(String.init) ?? "-"):\($0.gid.map(String.init) ?? "-")" })
        guard pairs.count == 1, let only = records.first, let uid = only.uid, let gid = only.gid else {
            throw Failure(
                description: "started as root, but no `user:` is configured and the passwd-file entries do not share one uid:gid "
                    + "(found \(pairs.sorted().prefix(5).joined(separator: ", "))); set `user:` (and `group:`) in the configuration"
            )
        }
        guard uid != 0 else { throw Failure(description: "the passwd-file entries' uid is 0; pop3d will not serve mail as root") }
        return Identity(uid: uid_t(uid), gid: gid_t(gid))
    }

    /// The owner of `path`, or of its nearest existing ancestor.
    public static func owner(ofNearestExisting path: String) -> Identity? {
        var current = path
        while !current.isEmpty {
            var info = stat()
            if stat(current, &info) == 0 { return Identity(uid: info.st_uid, gid: info.st_gid) }
            guard let slash = current.lastIndex(of: "/") else { break }
            current = slash == current.startIndex ? "/" : String(current[..<slash])
            if current == "/" {
                return stat("/", &info) == 0 ? Identity(uid: info.st_uid, gid: info.st_gid) : nil
            }
        }
        return nil
    }

    /// Becomes `identity` for good: supplementary groups, gid, then uid; and checks root cannot be regained.
    public static func drop(to identity: Identity) throws {
        var groups = [identity.gid]
        guard setgroups(1, &groups) == 0 else { throw Failure(description: "setgroups: \(String(cString: strerror(errno)))") }
        guard setgid(identity.gid) == 0 else { throw Failure(description: "setgid(\(identity.gid)): \(String(cString: strerror(errno)))") }
        guard setuid(identity.uid) == 0 else { throw Failure(description: "setuid(\(identity.uid)): \(String(cString: strerror(errno)))") }
        guard setuid(0) != 0, geteuid() == identity.uid, getegid() == identity.gid else {
            throw Failure(description: "privileges could not be dropped for good")
        }
    }
}
