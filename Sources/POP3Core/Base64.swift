/// Strict base64 (RFC 4648 §4, with padding), as SASL exchanges use it (RFC 5034 §4).
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    /// Decodes canonical padded base64; anything else (bad characters, wrong padding, non-zero pad bits) is `nil`.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let input = Array(text.utf8)
        guard input.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 4 * 3)
        var i = 0
        while i < input.count {
            let isLast = i + 4 == input.count
            let c0 = decodeTable[Int(input[i])], c1 = decodeTable[Int(input[i + 1])]
            guard c0 != 0xFF, c1 != 0xFF else { return nil }
            let p2 = input[i + 2] == UInt8(ascii: "="), p3 = input[i + 3] == UInt8(ascii: "=")
            guard isLast || (!p2 && !p3), !(p2 && !p3) else { return nil }
            out.append(c0 << 2 | c1 >> 4)
            if p2 {
                guard c1 & 0x0F == 0 else { return nil }
            } else {
                let c2 = decodeTable[Int(input[i + 2])]
                guard c2 != 0xFF else { return nil }
                out.append((c1 & 0x0F) << 4 | c2 >> 2)
                if p3 {
                    guard c2 & 0x03 == 0 else { return nil }
                } else {
                    let c3 = decodeTable[Int(input[i + 3])]
                    guard c3 != 0xFF else { return nil }
                    out.append((c2 & 0x03) << 6 | c3)
                }
            }
            i += 4
        }
        return out
    }

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let input = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity((input.count + 2) / 3 * 4)
        var i = 0
        while i < input.count {
            let b0 = input[i], b1 = i + 1 < input.count ? input[i + 1] : 0, b2 = i + 2 < input.count ? input[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(i + 1 < input.count ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < input.count ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
