import SystemIO

/// POP3's surprise for new users: messages are deleted from the server once fetched. For an account of the accounts
/// file with neither `keep` nor `keep_days`, the first run says so once, plainly, and how to keep them; a marker in
/// the state directory remembers that it was said.
public enum DeletionNotice {
    /// The notice for `account` if it has not been given yet (and records that it has); nil otherwise.
    public static func once(account: String, key: AccountKey, stateDirectory: String) -> String? {
        let marker = FileSystem.join(stateDirectory, "\(key.fileStem).deletion-notice")
        if (try? FileSystem.readFile(marker, limit: 64)) != nil { return nil }
        do {
            try FileSystem.atomicReplace(marker, with: Array("said\n".utf8), mode: 0o600)
        } catch {
            // Without a marker the notice would repeat at every run; better once too often than never.
        }
        return """
            pop3: \(account): messages are DELETED from the server once they are stored here (POP3's default). To leave \
            them on the server, add "keep: true" (or "keep_days: 14", as Outlook and Thunderbird do) to this account in \
            the accounts file, or pass --keep / --keep-days N. This notice is shown once.
            """
    }
}
