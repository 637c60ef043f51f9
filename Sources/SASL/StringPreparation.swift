import Foundation

/// How UTF-8 user names and passwords are compared (RFC 6856 §2 asks for SASLprep / normalization):
/// user names in Unicode NFC, passwords with SASLprep (RFC 4013).
public enum StringPreparation {
    /// A user name as looked up: NFC, so that "é" typed as e + U+0301 finds the account written with U+00E9.
    public static func userName(_ name: String) -> String {
        name.unicodeScalars.allSatisfy(\.isASCII) ? name : name.precomposedStringWithCanonicalMapping
    }

    /// SASLprep (RFC 4013 §2) of a password: non-ASCII spaces become U+0020, "commonly mapped to nothing"
    /// characters (RFC 3454 B.1) go, then NFKC. Nil when the result holds a prohibited character (controls,
    /// private use, surrogates, non-characters, …) or is empty. ASCII without controls is returned unchanged.
    public static func saslPrep(_ text: String) -> String? {
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return text.isEmpty ? nil : text }
        var mapped = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if Self.mappedToNothing.contains(scalar.value) { continue }
            mapped.append(Self.nonASCIISpaces.contains(scalar.value) ? " " : scalar)
        }
        let normalized = String(mapped).precomposedStringWithCompatibilityMapping
        guard !normalized.isEmpty, !normalized.unicodeScalars.contains(where: Self.isProhibited) else { return nil }
        return normalized
    }

    /// RFC 3454 C.1.2.
    static let nonASCIISpaces: Set<UInt32> = [
        0x00A0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
        0x200B, 0x202F, 0x205F, 0x3000,
    ]
    /// RFC 3454 B.1.
    static let mappedToNothing: Set<UInt32> = [
        0x00AD, 0x034F, 0x1806, 0x180B, 0x180C, 0x180D, 0x200C, 0x200D, 0x2060, 0xFE00, 0xFE01, 0xFE02, 0xFE03,
        0xFE04, 0xFE05, 0xFE06, 0xFE07, 0xFE08, 0xFE09, 0xFE0A, 0xFE0B, 0xFE0C, 0xFE0D, 0xFE0E, 0xFE0F, 0xFEFF,
    ]

    /// RFC 4013 §2.3 (RFC 3454 C.2.1, C.2.2, C.3–C.9), by ranges.
    static func isProhibited(_ scalar: Unicode.Scalar) -> Bool {
        let v = scalar.value
        switch v {
        case 0x0000...0x001F, 0x007F...0x009F: return true  // controls
        case 0x06DD, 0x070F, 0x180E, 0x200C...0x200F, 0x2028...0x202E, 0x2060...0x206F, 0xFEFF, 0xFFF9...0xFFFD: return true
        case 0x1D173...0x1D17A: return true
        case 0xE000...0xF8FF, 0xF0000...0xFFFFD, 0x100000...0x10FFFD: return true  // private use
        case 0xFDD0...0xFDEF: return true  // non-characters
        case 0xE0001, 0xE0020...0xE007F: return true  // tagging
        default:
            return v & 0xFFFE == 0xFFFE  // U+xxFFFE / U+xxFFFF non-characters
        }
    }
}
