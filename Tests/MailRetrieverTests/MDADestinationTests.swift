import Foundation
import SystemIO
import Testing

@testable import MailRetriever

@Suite struct MDADestinationTests {
    func setUp(_ command: String) throws -> (TemporaryDirectory, UIDLJournal, MDADestination) {
        let dir = try TemporaryDirectory()
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        let mda = MDADestination(command: command)
        try mda.recover(journal: journal)
        return (dir, journal, mda)
    }

    @Test func deliversLFMessageOnStandardInput() throws {
        let dir = try TemporaryDirectory()
        let (state, journal, mda) = try setUp("cat > '\(dir.file("out"))'")
        try deliver(["Subject: x\r\n\r", "\nline\r\n"], uid: "1", to: mda, journal: journal)
        #expect(try contents(dir.file("out")) == "Subject: x\n\nline\n")
        #expect(journal.entry(for: "1")?.delivered == true)
        // The spool was unlinked at once: only the journal remains in the state directory.
        #expect(try (FileSystem.entries(in: state.path) ?? []) == [testKey.fileStem + ".journal"])
    }

    @Test func nonZeroExitFailsCommitWithStatusAndStderr() throws {
        let (state, _, mda) = try setUp("cat >/dev/null; echo 'no such user' >&2; echo second >&2; exit 3")
        defer { withExtendedLifetime(state) {} }
        let sink = try mda.begin(uid: "1")
        try sink.write(buffer("Subject: x\r\n\r\n"))
        let error = try #require(throws: MailRetrieverError.self) { try sink.commit() }
        guard case .mdaFailed(_, let status, let signal, let stderr) = error else {
            Issue.record("unexpected \(error)")
            return
        }
        #expect(status == 3)
        #expect(signal == nil)
        #expect(stderr == "no such user")
        #expect(error.description.contains("exited with status 3: no such user"))
    }

    /// docs/security-cases.md 99: a hung MDA (and the child it started) is killed at the deadline; the delivery fails.
    @Test func hungCommandIsKilledAtItsDeadline() throws {
        let dir = try TemporaryDirectory()
        let journal = try UIDLJournal.open(testKey, stateDirectory: dir.path)
        let mda = MDADestination(command: "cat >/dev/null; sleep 300 & wait", timeoutSeconds: 1)
        try mda.recover(journal: journal)
        let sink = try mda.begin(uid: "1")
        try sink.write(buffer("Subject: x\r\n\r\n"))
        let start = ContinuousClock.now
        let error = try #require(throws: MailRetrieverError.self) { try sink.commit() }
        #expect(ContinuousClock.now - start < .seconds(60), "killed, not waited for")
        guard case .mdaFailed(_, _, let signal, let stderr) = error else {
            Issue.record("unexpected \(error)")
            return
        }
        #expect(signal == SIGKILL)
        #expect(stderr.contains("killed after 1 s"))
        #expect(journal.entry(for: "1")?.delivered != true)
    }

    @Test func plainExitThree() throws {
        let (state, _, mda) = try setUp("exit 3")
        defer { withExtendedLifetime(state) {} }
        let sink = try mda.begin(uid: "1")
        try sink.write(buffer("x\r\n"))
        #expect(throws: MailRetrieverError.mdaFailed(command: "exit 3", exitStatus: 3, signal: nil, stderr: "")) {
            try sink.commit()
        }
    }

    @Test func killedBySignal() throws {
        let (state, _, mda) = try setUp("kill -9 $$")
        defer { withExtendedLifetime(state) {} }
        let sink = try mda.begin(uid: "1")
        #expect(throws: MailRetrieverError.mdaFailed(command: "kill -9 $$", exitStatus: nil, signal: 9, stderr: "")) {
            try sink.commit()
        }
    }
}

@Suite struct PasswordSourceTests {
    @Test func fileFirstLineWithoutCRLF() throws {
        let dir = try TemporaryDirectory()
        try writeFile(dir.file("pass"), "s3cret pass\r\nsecond line\n")
        #expect(try PasswordSource.file(dir.file("pass")).readPassword() == "s3cret pass")
    }

    @Test func groupReadableFileRefused() throws {
        let dir = try TemporaryDirectory()
        try writeFile(dir.file("pass"), "x\n", mode: 0o640)
        #expect(throws: PasswordError.tooOpen(path: dir.file("pass"), mode: 0o640)) {
            try PasswordSource.file(dir.file("pass")).readPassword()
        }
    }

    @Test func commandFirstLineAndExitStatus() throws {
        #expect(try PasswordSource.command("printf 'tok en\\r\\nmore\\n'").readPassword() == "tok en")
        #expect(throws: PasswordError.commandFailed(command: "echo x; exit 2", status: 2)) {
            try PasswordSource.command("echo x; exit 2").readPassword()
        }
        #expect(throws: PasswordError.empty(source: "password command 'true'")) {
            try PasswordSource.command("true").readPassword()
        }
    }
}
