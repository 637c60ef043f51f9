/// A 1-based message number as used on the wire (RFC 1939 §5).
///
/// Parsed with checked arithmetic: `4294967297` is an error, never `1`.
public struct MessageNumber: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt32

    /// - Returns: `nil` for 0, which names no message.
    public init?(_ rawValue: UInt32) {
        guard rawValue >= 1 else { return nil }
        self.rawValue = rawValue
    }

    /// The 0-based index into a scan listing.
    public var index: Int { Int(self.rawValue) - 1 }

    public init(index: Int) {
        precondition(index >= 0 && index < Int(UInt32.max))
        self.rawValue = UInt32(index + 1)
    }

    public var description: String { String(self.rawValue) }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A POP3 unique-id: 1–70 characters in 0x21…0x7E.
/// - SeeAlso: [RFC 1939 §7](https://www.rfc-editor.org/rfc/rfc1939#page-12)
public struct UniqueID: Hashable, Sendable, CustomStringConvertible {
    public let value: String

    public init?(_ value: String) {
        let utf8 = value.utf8
        guard POP3Defaults.uniqueIDLengthRange.contains(utf8.count),
            utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E })
        else { return nil }
        self.value = value
    }

    public var description: String { self.value }
}

/// Parses a run of ASCII digits with overflow checking. No sign, no spaces, no leading `+`.
@inlinable
func parseDecimal<C: Collection<UInt8>>(_ digits: C) -> UInt32? {
    guard !digits.isEmpty, digits.count <= 10 else { return nil }
    var value: UInt32 = 0
    for byte in digits {
        guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
        let (times10, o1) = value.multipliedReportingOverflow(by: 10)
        let (sum, o2) = times10.addingReportingOverflow(UInt32(byte - UInt8(ascii: "0")))
        guard !o1, !o2 else { return nil }
        value = sum
    }
    return value
}
