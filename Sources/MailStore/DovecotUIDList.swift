/// Dovecot's Maildir index, the `dovecot-uidlist` file, in memory.
///
/// Version 3 (Dovecot ≥ 1.1), which is what we write:
///
///     header: 3 V<uidvalidity> N<nextuid> G<mailbox guid, 32 hex> [<key><value> ...]
///     record: <uid> [<key><value> ...] :<base filename>
///
/// Version 1 (Dovecot ≤ 1.0, Courier's `courierimapuiddb`), which we read:
///
///     header: 1 <uidvalidity> <nextuid>
///     record: <uid> <filename>
///
/// Record keys are upper-case letters: `S` physical size, `W` virtual size (the POP3 size), `P` POP3 UIDL overriding
/// the default format (empty: the base file name), `O` POP3 order, `G` message GUID. Unknown keys are kept as they
/// are. Records are written with the base file name (the part before `:`), in UID order.
///
/// - SeeAlso: Dovecot `src/lib-storage/index/maildir/maildir-uidlist.c` and `maildir-uidlist.h`.
struct DovecotUIDList: Sendable, Equatable {
    static let fileName = "dovecot-uidlist"

    struct Record: Sendable, Equatable {
        var uid: UInt32
        /// `<key><value>` tokens in file order.
        var extensions: [String]
        /// The file name up to (not including) the first `:`.
        var baseName: String

        func extensionValue(_ key: Character) -> Substring? {
            for token in self.extensions where token.first == key {
                return token.dropFirst()
            }
            return nil
        }

        mutating func setExtension(_ key: Character, _ value: String) {
            self.extensions.removeAll { $0.first == key }
            self.extensions.append(String(key) + value)
        }
    }

    /// The version read (1 or 3); always 3 once written.
    var version: Int = 3
    var uidValidity: UInt32
    var nextUID: UInt32
    /// 32 lower-case hex digits; empty when the file had none (one is generated on write).
    var mailboxGUID: String
    /// Header tokens other than V, N, G, kept as read.
    var headerExtensions: [String] = []
    /// Sorted by UID, no duplicate UIDs or base names.
    var records: [Record] = []

    init(uidValidity: UInt32, nextUID: UInt32 = 1, mailboxGUID: String = Self.generateGUID()) {
        self.uidValidity = uidValidity
        self.nextUID = nextUID
        self.mailboxGUID = mailboxGUID
    }

    static func generateGUID() -> String {
        var rng = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(32)
        for _ in 0..<32 { out.append(digits[Int(rng.next() % 16)]) }
        return String(decoding: out, as: UTF8.self)
    }

    enum ParseError: Error, Equatable, CustomStringConvertible {
        case emptyFile
        case badHeader(String)
        case unsupportedVersion(Int)

        var description: String {
            switch self {
            case .emptyFile: return "empty file"
            case .badHeader(let reason): return "corrupted header: \(reason)"
            case .unsupportedVersion(let version): return "unsupported version \(version)"
            }
        }
    }

    /// Parses the file. A broken header is an error (Dovecot then recreates the file); a broken record line is
    /// skipped and reported in `warnings`, as is an unterminated last line (a writer appending right now).
    static func parse(_ bytes: [UInt8]) throws(ParseError) -> (list: DovecotUIDList, warnings: [String]) {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var warnings: [String] = []
        for index in bytes.indices where bytes[index] == 0x0A {
            lines.append(bytes[start..<index])
            start = index + 1
        }
        if start < bytes.count {
            warnings.append("ignoring unterminated last line")
        }
        guard let headerLine = lines.first else { throw .emptyFile }
        var list = try Self.parseHeader(String(decoding: headerLine, as: UTF8.self))

        var byBaseName: [String: Int] = [:]
        byBaseName.reserveCapacity(lines.count)
        var records: [Record] = []
        records.reserveCapacity(lines.count)
        var needsSort = false
        var seenUIDs = Set<UInt32>()
        for (number, line) in lines.enumerated().dropFirst() {
            if line.isEmpty { continue }
            guard let record = Self.parseRecord(line, version: list.version) else {
                warnings.append("line \(number + 1): invalid record skipped")
                continue
            }
            guard seenUIDs.insert(record.uid).inserted else {
                warnings.append("line \(number + 1): duplicate UID \(record.uid) skipped")
                continue
            }
            if let previous = records.last, previous.uid > record.uid { needsSort = true }
            if let existing = byBaseName[record.baseName] {
                // Dovecot: "expunged file moved back and appended": the later line wins.
                warnings.append("line \(number + 1): duplicate file entry, UID \(records[existing].uid) -> \(record.uid)")
                records[existing] = record
                needsSort = true
            } else {
                byBaseName[record.baseName] = records.count
                records.append(record)
            }
        }
        if needsSort { records.sort { $0.uid < $1.uid } }
        if let last = records.last, last.uid >= list.nextUID {
            list.nextUID = last.uid &+ 1 == 0 ? UInt32.max : last.uid + 1
        }
        list.records = records
        return (list, warnings)
    }

    private static func parseHeader(_ line: String) throws(ParseError) -> DovecotUIDList {
        let tokens = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let versionToken = tokens.first, versionToken.count == 1, let version = Int(versionToken) else {
            throw .badHeader("invalid version number")
        }
        var uidValidity: UInt32 = 0
        var nextUID: UInt32 = 0
        var guid = ""
        var extra: [String] = []
        switch version {
        case 1:
            guard tokens.count >= 3, let v = UInt32(tokens[1]), let n = UInt32(tokens[2]) else {
                throw .badHeader("version 1")
            }
            uidValidity = v
            nextUID = n
        case 3:
            for token in tokens.dropFirst() {
                let value = token.dropFirst()
                switch token.first {
                case "V": uidValidity = UInt32(value) ?? 0
                case "N": nextUID = UInt32(value) ?? 0
                case "G":
                    guard value.count == 32, value.utf8.allSatisfy({ Self.isHexDigit($0) }) else {
                        throw .badHeader("invalid mailbox GUID")
                    }
                    guid = value.lowercased()
                default: extra.append(String(token))
                }
            }
        default:
            throw .unsupportedVersion(version)
        }
        guard uidValidity != 0, nextUID != 0 else {
            throw .badHeader("uidvalidity=\(uidValidity), next_uid=\(nextUID)")
        }
        var list = DovecotUIDList(uidValidity: uidValidity, nextUID: nextUID, mailboxGUID: guid)
        list.version = version
        list.headerExtensions = extra
        return list
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x46).contains(byte) || (0x61...0x66).contains(byte)
    }

    /// `<uid> [<key><value> ...] :<filename>` (v3) or `<uid> <filename>` (v1).
    private static func parseRecord(_ line: ArraySlice<UInt8>, version: Int) -> Record? {
        var index = line.startIndex
        var uid: UInt64 = 0
        while index < line.endIndex, (0x30...0x39).contains(line[index]) {
            uid = uid * 10 + UInt64(line[index] - 0x30)
            guard uid < UInt64(UInt32.max) else { return nil }
            index += 1
        }
        guard uid != 0, index < line.endIndex, line[index] == 0x20 else { return nil }
        while index < line.endIndex, line[index] == 0x20 { index += 1 }

        var extensions: [String] = []
        if version == 3 {
            while index < line.endIndex, line[index] != 0x3A {
                let tokenStart = index
                while index < line.endIndex, line[index] != 0x20 { index += 1 }
                // Dovecot drops extension keys that are not A–Z.
                if (0x41...0x5A).contains(line[tokenStart]) {
                    extensions.append(String(decoding: line[tokenStart..<index], as: UTF8.self))
                }
                while index < line.endIndex, line[index] == 0x20 { index += 1 }
            }
            guard index < line.endIndex else { return nil }
            index += 1  // the ':'
        }
        let name = line[index...]
        guard !name.isEmpty, !name.contains(0x2F) else { return nil }
        let base = name.firstIndex(of: 0x3A).map { name[..<$0] } ?? name
        guard !base.isEmpty else { return nil }
        return Record(uid: UInt32(uid), extensions: extensions, baseName: String(decoding: base, as: UTF8.self))
    }

    /// The file in version 3 format.
    func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + self.records.count * 64)
        var header = "3 V\(self.uidValidity) N\(self.nextUID) G\(self.mailboxGUID.isEmpty ? Self.generateGUID() : self.mailboxGUID)"
        for token in self.headerExtensions { header += " " + token }
        out.append(contentsOf: header.utf8)
        out.append(0x0A)
        for record in self.records {
            out.append(contentsOf: String(record.uid).utf8)
            for token in record.extensions {
                out.append(0x20)
                out.append(contentsOf: token.utf8)
            }
            out.append(0x20)
            out.append(0x3A)
            out.append(contentsOf: record.baseName.utf8)
            out.append(0x0A)
        }
        return out
    }
}
