import Logging
import MailStore
import MailStorePostgres
import NIOCore
import POP3Client
import SystemIO

/// `pop3d import`: copies every message of a remote POP3 maildrop into a local Maildir, keeping the remote's UIDL
/// for each, so that pop3d then serves exactly the UIDLs the old server served and no client downloads anything
/// twice. The remote is left unchanged (no DELE). Each message is durable before its UIDL is recorded, and a file
/// stored but not yet recorded is found again by its name tag, so an import killed at any point resumes without
/// copying anything twice.
public struct MaildropImporter: Sendable {
    public struct Report: Sendable, Equatable {
        /// Copied in this run.
        public var copied = 0
        /// Already served locally with the same UIDL (an earlier run, or the same message delivered otherwise).
        public var alreadyThere = 0
        /// Stored by an earlier run that stopped before recording their UIDLs.
        public var resumed = 0
        public var octets = 0
        public init() {}
    }

    /// One difference between the remote and the local listing (`--verify`).
    public enum Difference: Sendable, Equatable, CustomStringConvertible {
        case missingLocally(uniqueID: String)
        case onlyLocally(uniqueID: String)
        case sizeDiffers(uniqueID: String, remote: Int, local: Int)

        public var description: String {
            switch self {
            case .missingLocally(let uid): "missing here: \(uid)"
            case .onlyLocally(let uid): "only here: \(uid)"
            case .sizeDiffers(let uid, let remote, let local): "size of \(uid): remote \(remote), here \(local)"
            }
        }
    }

    /// Where the messages go: a Maildir (UIDLs into dovecot-uidlist), or an account in PostgreSQL (each message one
    /// transaction with its UIDL, so nothing is ever half-stored and no name tag is needed to resume).
    public enum Destination: Sendable {
        case maildir(MaildirImport)
        case database(MailDatabase, account: Int64)
    }

    public let destination: Destination
    public let client: POP3ClientConfiguration
    public let logger: Logger
    /// UIDLs recorded in dovecot-uidlist after this many copies (and at the end).
    public var recordEvery = 200

    public init(maildir: String, client: POP3ClientConfiguration, logger: Logger) {
        self.init(destination: .maildir(MaildirImport(maildir: maildir, logger: logger)), client: client, logger: logger)
    }

    public init(destination: Destination, client: POP3ClientConfiguration, logger: Logger) {
        self.destination = destination
        self.client = client
        self.logger = logger
    }

    /// UIDL → size of what the destination serves now.
    func localListing() async throws -> [String: Int] {
        switch self.destination {
        case .maildir(let maildir):
            return Dictionary(try maildir.listing().map { ($0.uniqueID, $0.size) }, uniquingKeysWith: { a, _ in a })
        case .database(let database, let account):
            return try await database.listing(account: account)
        }
    }

    /// Logs in and copies what is missing; with `verify`, compares the listings afterwards.
    public func run(user: String, password: String, verify: Bool) async throws -> (Report, [Difference]) {
        let connection = try await POP3Connection.connect(self.client, logger: self.logger)
        do {
            try await connection.login(user: user, password: password)
            let uidls = try await connection.uidl()
            let sizes = try await connection.list()
            let report = try await self.copy(uidls, from: connection)
            let differences = verify ? Self.compare(uidls.map { ($0.uid, sizes[$0.number] ?? -1) }, local: try await self.localListing()) : []
            try await connection.quit()
            return (report, differences)
        } catch {
            await connection.close()
            throw error
        }
    }

    func copy(_ remote: [(number: Int, uid: String)], from connection: POP3Connection) async throws -> Report {
        var report = Report()
        let served = Set(try await self.localListing().keys)
        var tagged: [String: String] = [:]
        if case .maildir(let maildir) = self.destination { tagged = try maildir.taggedFiles() }
        var pending: [String: String] = [:]  // base name → UIDL, not yet in dovecot-uidlist
        var wanted: [Int: String] = [:]
        for (number, uid) in remote {
            if served.contains(uid) {
                report.alreadyThere += 1
            } else if let base = tagged[MaildirImport.tag(uid)] {
                pending[base] = uid
                report.resumed += 1
            } else {
                wanted[number] = uid
            }
        }
        if case .maildir(let maildir) = self.destination { try maildir.recordUniqueIDs(pending) }
        pending = [:]
        let numbers = remote.map(\.number).filter { wanted[$0] != nil }
        guard !numbers.isEmpty else { return report }
        var spool: Int32 = -1
        var size = 0
        defer { if spool >= 0 { FileSystem.close(spool) } }
        let destination = self.destination
        try await connection.retrieve(
            numbers,
            begin: { _ in
                if spool >= 0 { FileSystem.close(spool) }
                spool = try FileSystem.openUnnamedTemporaryFile()
                size = 0
            },
            chunk: { _, piece in
                try piece.withUnsafeReadableBytes { raw in
                    try Result { () throws(FileSystemError) in try FileSystem.write(spool, raw, path: "<import spool>") }.get()
                }
                size += piece.readableBytes
            },
            end: { number in
                let uid = wanted[number]!
                switch destination {
                case .maildir(let maildir):
                    let base = try maildir.store(spool: spool, size: size, uniqueID: uid)
                    pending[base] = uid
                    if pending.count >= self.recordEvery {
                        try maildir.recordUniqueIDs(pending)
                        pending = [:]
                    }
                case .database(let database, let account):
                    let bytes = DeliveryBytes.spool(prefix: [], descriptor: spool, size: size)
                    if case .failure(let failure) = await database.deliverResult(account: account, maximumSize: nil, bytes: bytes, uidl: uid) {
                        throw failure
                    }
                }
                report.copied += 1
                report.octets += size
            }
        )
        if case .maildir(let maildir) = self.destination { try maildir.recordUniqueIDs(pending) }
        return report
    }

    /// The remote listing against the local one: every UIDL on both sides with the same size, nothing extra.
    static func compare(_ remote: [(uid: String, size: Int)], local: [String: Int]) -> [Difference] {
        var differences: [Difference] = []
        for (uid, size) in remote {
            guard let here = local[uid] else {
                differences.append(.missingLocally(uniqueID: uid))
                continue
            }
            if here != size { differences.append(.sizeDiffers(uniqueID: uid, remote: size, local: here)) }
        }
        let remoteIDs = Set(remote.map(\.uid))
        for uid in local.keys.sorted() where !remoteIDs.contains(uid) { differences.append(.onlyLocally(uniqueID: uid)) }
        return differences
    }
}
