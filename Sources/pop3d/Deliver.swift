import Accounts
import ArgumentParser
import Foundation
import MailStore
import POP3Server

/// `pop3d deliver NAME --config FILE < message`: local delivery for MTAs.
///
/// Exit status follows sysexits(3): 0 once the message is durable (tmp, fsync, rename, directory fsync),
/// 67 (EX_NOUSER) for an unknown user, 73 (EX_CANTCREAT) over `--max-size`, 77 (EX_NOPERM) over the account's
/// quota (as `dovecot-lda -e`), 75 (EX_TEMPFAIL) for anything the MTA should retry.
struct Deliver: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deliver one message from standard input into a user's Maildir.")

    @Argument var name: String
    @OptionGroup var options: ConfigOption
    @Option(name: .customLong("max-size"), help: "Refuse messages larger than this many bytes (exit 75 is not used for this: 73, EX_CANTCREAT).")
    var maximumSize: Int?

    static let exitNoUser: Int32 = 67
    static let exitTemporaryFailure: Int32 = 75
    static let exitCannotCreate: Int32 = 73
    static let exitQuotaExceeded: Int32 = 77

    func run() throws {
        func fail(_ message: String, _ code: Int32) -> ExitCode {
            FileHandle.standardError.write(Data("pop3d deliver: \(message)\n".utf8))
            return ExitCode(code)
        }
        let configuration: ServerConfiguration
        let passwd: PasswdFile
        do {
            let options = self.options
            configuration = try runBlocking { try await options.load() }
            passwd = try PasswdFile.parse(String(contentsOfFile: configuration.passwdFile, encoding: .utf8), path: configuration.passwdFile)
        } catch {
            throw fail("configuration: \(error)", Self.exitTemporaryFailure)
        }
        guard let record = passwd.record(named: self.name) else {
            throw fail("unknown user \(self.name)", Self.exitNoUser)
        }
        let path: String
        do {
            path = try MaildirLocator(template: configuration.maildirTemplate).path(for: record)
        } catch {
            throw fail("no maildir for \(self.name): \(error)", Self.exitTemporaryFailure)
        }
        let quota: MaildirQuota
        do {
            quota = try MaildirQuota(extraFields: record.extraFields)
        } catch {
            throw fail("quota rule of \(self.name): \(error)", Self.exitTemporaryFailure)
        }
        // As root (an MTA's local delivery), write as the mail owner: the account's uid/gid when the passwd-file
        // gives them, else the server's `user`/shared uid, so that the unprivileged server can read the files.
        if geteuid() == 0 {
            do {
                let identity: PrivilegeDrop.Identity?
                if let uid = record.uid, let gid = record.gid, uid != 0 {
                    // The same rule as the server's mail workers: never a system account.
                    let owner = MailOwner(uid: uid, gid: gid)
                    guard PrivilegeSeparation.allows(owner, firstValidUID: configuration.firstValidUID) else {
                        throw PrivilegeDrop.Failure(description: "\(self.name)'s uid \(uid) / gid \(gid) is below first_valid_uid \(configuration.firstValidUID) or root's")
                    }
                    identity = owner
                } else if let configured = try? PrivilegeDrop.target(user: configuration.user, group: configuration.group, records: passwd.records) {
                    identity = configured
                } else {
                    // Neither: write as the owner of the Maildir (or of its nearest existing folder), so a root-run
                    // development set-up keeps working and a vmail-owned tree stays vmail-owned.
                    identity = PrivilegeDrop.owner(ofNearestExisting: path)
                }
                if let identity, identity.uid != 0 { try PrivilegeDrop.drop(to: identity) }
            } catch {
                throw fail("cannot drop root privileges: \(error)", Self.exitTemporaryFailure)
            }
        }
        // Over quota: refused before reading when already full, else the room left caps the size.
        var sizeLimit = self.maximumSize
        var quotaRoom: Int?
        if !quota.isUnlimited {
            let used: (bytes: Int, messages: Int)
            do {
                used = try MaildirQuota.usage(ofMaildir: path)
            } catch {
                throw fail("cannot measure \(self.name)'s Maildir for its quota: \(error)", Self.exitTemporaryFailure)
            }
            if let limit = quota.messages, used.messages >= limit {
                throw fail("quota exceeded: \(self.name) has \(used.messages) messages (limit \(limit))", Self.exitQuotaExceeded)
            }
            if let limit = quota.storageBytes {
                let room = limit - used.bytes
                guard room > 0 else {
                    throw fail("quota exceeded: \(self.name) uses \(used.bytes) of \(limit) bytes", Self.exitQuotaExceeded)
                }
                quotaRoom = room
                sizeLimit = min(sizeLimit ?? room, room)
            }
        }
        do {
            let file = try MaildirDelivery.deliver(readingFrom: STDIN_FILENO, toMaildir: path, maximumSize: sizeLimit)
            FileHandle.standardError.write(Data("pop3d deliver: delivered to \(self.name) as \(file)\n".utf8))
        } catch let error as MaildropError where error == .permanent("message too large") {
            if let quotaRoom, quotaRoom == sizeLimit, quotaRoom != self.maximumSize {
                throw fail("quota exceeded: the message is larger than the \(quotaRoom) bytes left for \(self.name); nothing was stored", Self.exitQuotaExceeded)
            }
            throw fail("\(error)", Self.exitCannotCreate)
        } catch {
            throw fail("delivery failed, nothing was stored: \(error)", Self.exitTemporaryFailure)
        }
    }
}
