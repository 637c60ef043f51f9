/// The replies a client parses for the maildrop's listings: STAT's drop listing, LIST's scan listings and UIDL's
/// unique-id listings. Each line is parsed strictly and on its own (no state), so a client can check an endless
/// or padded listing line by line in bounded memory.
/// - SeeAlso: [RFC 1939 §5, §7](https://www.rfc-editor.org/rfc/rfc1939#section-5)

/// A listing line that is not what RFC 1939 allows. The client reports it as a protocol violation.
public enum ListingParseError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformedDropListing
    case malformedScanListing
    case malformedUniqueIDListing
    case duplicateUniqueID

    public var description: String {
        switch self {
        case .malformedDropListing: "malformed STAT reply"
        case .malformedScanListing: "malformed LIST line"
        case .malformedUniqueIDListing: "malformed UIDL line"
        case .duplicateUniqueID: "duplicate UIDL"
        }
    }
}

/// STAT's `+OK count size`: the text after `+OK`. Anything after the two numbers is ignored (RFC 1939 §5 allows
/// servers to add information there).
public struct DropListing: Sendable, Equatable {
    public var count: Int
    public var size: Int

    public init(count: Int, size: Int) {
        self.count = count
        self.size = size
    }

    public static func parse(_ text: String) throws(ListingParseError) -> Self {
        let parts = text.split(separator: " ")
        guard parts.count >= 2, let count = decimal(parts[0]), let size = decimal(parts[1]) else {
            throw .malformedDropListing
        }
        return Self(count: count, size: size)
    }
}

/// One line of LIST: `number size`, the number at least 1. Text after the size is ignored (RFC 1939 §5).
public struct ScanListing: Sendable, Equatable {
    public var number: Int
    public var size: Int

    public init(number: Int, size: Int) {
        self.number = number
        self.size = size
    }

    public static func parse(_ line: some Collection<UInt8>) throws(ListingParseError) -> Self {
        let parts = line.split(separator: UInt8(ascii: " "))
        guard parts.count >= 2, let number = decimal(parts[0]), number > 0, let size = decimal(parts[1]) else {
            throw .malformedScanListing
        }
        return Self(number: number, size: size)
    }
}

/// One line of UIDL: `number unique-id`, exactly two fields separated by one space, the id 1–70 characters in
/// 0x21–0x7E (RFC 1939 §7).
public struct UniqueIDListing: Sendable, Equatable {
    public var number: Int
    public var uid: UniqueID

    public init(number: Int, uid: UniqueID) {
        self.number = number
        self.uid = uid
    }

    public static func parse(_ line: some Collection<UInt8>) throws(ListingParseError) -> Self {
        let parts = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 2, let number = decimal(parts[0]), number > 0,
            let uid = UniqueID(String(decoding: parts[1], as: UTF8.self))
        else { throw .malformedUniqueIDListing }
        return Self(number: number, uid: uid)
    }

    /// Collects a whole UIDL reply line by line, refusing a unique-id the server gave twice (a client would
    /// otherwise take two messages for one and delete the one it did not store).
    public struct Collector: Sendable {
        public private(set) var listings: [UniqueIDListing] = []
        private var seen = Set<UniqueID>()

        public init() {}

        public mutating func add(_ line: some Collection<UInt8>) throws(ListingParseError) {
            let listing = try UniqueIDListing.parse(line)
            guard self.seen.insert(listing.uid).inserted else { throw .duplicateUniqueID }
            self.listings.append(listing)
        }
    }
}

/// A non-negative decimal without sign, bounded by `Int` (an overflowing number is malformed, never wrapped).
private func decimal(_ digits: some Collection<UInt8>) -> Int? {
    guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
        return nil
    }
    return digits.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
}

private func decimal(_ digits: Substring) -> Int? { decimal(digits.utf8) }
