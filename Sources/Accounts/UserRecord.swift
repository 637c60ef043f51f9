/// One account from a passwd-file (Dovecot format:
/// `user:password:uid:gid:gecos:home:shell:extra_fields`).
///
/// The password field is a credential: it never appears in `description`,
/// `debugDescription` or a `Mirror` (so `dump`, string interpolation and
/// swift-log metadata stay clean).
public struct UserRecord: Sendable, Equatable {
    public var name: String
    /// The stored password field, e.g. `{SHA512-CRYPT}$6$…`. Never printed.
    public var passwordField: String
    public var uid: UInt32?
    public var gid: UInt32?
    public var home: String?
    /// Dovecot "extra fields": the 8th column onwards, split at spaces (e.g. `userdb_quota_rule=*:storage=1G`).
    public var extraFields: [String]

    public init(
        name: String,
        passwordField: String,
        uid: UInt32? = nil,
        gid: UInt32? = nil,
        home: String? = nil,
        extraFields: [String] = []
    ) {
        self.name = name
        self.passwordField = passwordField
        self.uid = uid
        self.gid = gid
        self.home = home
        self.extraFields = extraFields
    }
}

extension UserRecord: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String {
        var parts = ["name: \(String(reflecting: self.name))", "passwordField: <redacted>"]
        if let uid { parts.append("uid: \(uid)") }
        if let gid { parts.append("gid: \(gid)") }
        if let home { parts.append("home: \(String(reflecting: home))") }
        if !self.extraFields.isEmpty { parts.append("extraFields: \(self.extraFields)") }
        return "UserRecord(\(parts.joined(separator: ", ")))"
    }

    public var debugDescription: String { self.description }

    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "name": self.name,
                "passwordField": "<redacted>",
                "uid": self.uid as Any,
                "gid": self.gid as Any,
                "home": self.home as Any,
                "extraFields": self.extraFields,
            ],
            displayStyle: .struct
        )
    }
}
