import NIOCore

/// One LMTP/SMTP reply: a three-digit code, an enhanced status code (RFC 3463, announced with
/// ENHANCEDSTATUSCODES) and text lines. The text never carries client input (no address is echoed back).
/// - SeeAlso: [RFC 5321 §4.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.2), [RFC 2034](https://www.rfc-editor.org/rfc/rfc2034)
public struct LMTPReply: Sendable, Equatable, CustomStringConvertible {
    public var code: Int
    /// `2.1.5`, or nil for replies that carry none (220 greeting, 221, LHLO's 250 lines, 354).
    public var enhanced: String?
    public var lines: [String]

    public init(_ code: Int, _ enhanced: String?, _ lines: String...) {
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    public init(code: Int, enhanced: String?, lines: [String]) {
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    public var isTemporary: Bool { (400..<500).contains(self.code) }

    /// `250-first` … `250 last`, each line with the enhanced code when there is one.
    public func write(into buffer: inout ByteBuffer) {
        for (index, line) in self.lines.enumerated() {
            buffer.writeString(String(self.code))
            buffer.writeInteger(index == self.lines.count - 1 ? UInt8(ascii: " ") : UInt8(ascii: "-"))
            if let enhanced = self.enhanced {
                buffer.writeString(enhanced)
                if !line.isEmpty { buffer.writeInteger(UInt8(ascii: " ")) }
            }
            buffer.writeString(line)
            buffer.writeStaticString("\r\n")
        }
    }

    public var description: String {
        self.lines.enumerated().map { index, line in
            "\(self.code)\(index == self.lines.count - 1 ? " " : "-")\(self.enhanced.map { $0 + " " } ?? "")\(line)"
        }.joined(separator: " / ")
    }
}

extension LMTPReply {
    // The replies the session gives, in one place so that tests and the server name them.
    public static let ok = LMTPReply(250, "2.0.0", "OK")
    public static let senderOK = LMTPReply(250, "2.1.0", "Sender OK")
    public static let recipientOK = LMTPReply(250, "2.1.5", "Recipient OK")
    public static let reset = LMTPReply(250, "2.0.0", "Reset")
    public static let startData = LMTPReply(354, nil, "Send the message, end with <CR><LF>.<CR><LF>")
    public static let bye = LMTPReply(221, "2.0.0", "Bye")
    public static let delivered = LMTPReply(250, "2.0.0", "Delivered")
    public static let unknownRecipient = LMTPReply(550, "5.1.1", "No such user here")
    public static let tooManyRecipients = LMTPReply(452, "4.5.3", "Too many recipients")
    public static let messageTooLarge = LMTPReply(552, "5.3.4", "Message too big")
    public static let quotaExceeded = LMTPReply(552, "5.2.2", "Mailbox full: over quota")
    public static let quotaExceededTemporary = LMTPReply(452, "4.2.2", "Mailbox full: over quota")
    public static let localError = LMTPReply(451, "4.3.0", "Temporary local error, try again later")
    public static let lineTooLong = LMTPReply(500, "5.5.2", "Line too long")
    public static let unknownCommand = LMTPReply(500, "5.5.1", "Unknown command")
    public static let useLHLO = LMTPReply(500, "5.5.1", "This is LMTP: use LHLO")
    public static let syntaxError = LMTPReply(501, "5.5.4", "Syntax error in parameters")
    public static let unsupportedParameter = LMTPReply(555, "5.5.4", "Unsupported parameter")
    public static let needLHLO = LMTPReply(503, "5.5.1", "Send LHLO first")
    public static let needMail = LMTPReply(503, "5.5.1", "Send MAIL first")
    public static let nestedMail = LMTPReply(503, "5.5.1", "MAIL already given")
    public static let needRecipient = LMTPReply(503, "5.5.1", "No valid recipients")
    public static let mixedDataAndBDAT = LMTPReply(503, "5.5.1", "DATA and BDAT cannot be mixed in one transaction")
    public static let tooManyBadCommands = LMTPReply(421, "4.7.0", "Too many bad commands, closing")
    public static let timeout = LMTPReply(421, "4.4.2", "Idle too long, closing")
    public static let shuttingDown = LMTPReply(421, "4.3.2", "Shutting down, try again later")
    public static let tooManyConnections = LMTPReply(421, "4.3.2", "Too many connections, try again later")
    public static let notTrusted = LMTPReply(554, "5.7.1", "LMTP is not offered to this address")
    public static let vrfyDisabled = LMTPReply(252, "2.5.2", "Cannot VRFY, but will accept the message and attempt delivery")
    public static let utf8Required = LMTPReply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
}
