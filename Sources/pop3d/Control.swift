import ArgumentParser
import Foundation
import POP3Server
import SystemIO

/// `pop3d who`, `pop3d kick`, `pop3d penalty`: requests to the running server's control socket.
enum ControlCommand {
    /// Loads the configuration for its `control.socket`, sends the request, and turns a refusal into exit 1, an
    /// unreachable server into 69 (EX_UNAVAILABLE), a configuration without a control socket into 78.
    static func send(_ request: ControlRequest, options: ConfigOption) throws -> ControlResponse {
        let configuration: ServerConfiguration
        do {
            configuration = try runBlocking { try await options.load() }
        } catch {
            FileHandle.standardError.write(Data("pop3d: configuration error: \(error)\n".utf8))
            throw ExitCode(78)
        }
        guard let path = configuration.controlSocket else {
            FileHandle.standardError.write(Data("pop3d: control.socket is off in \(options.config)\n".utf8))
            throw ExitCode(78)
        }
        let response: ControlResponse
        do {
            response = try ControlClient.send(request, to: path)
        } catch {
            FileHandle.standardError.write(Data("pop3d: \(error)\n".utf8))
            throw ExitCode(69)
        }
        guard response.ok else {
            FileHandle.standardError.write(Data("pop3d: \(response.error ?? "refused")\n".utf8))
            throw ExitCode(1)
        }
        return response
    }

    static func printJSON(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }
}

struct Who: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the sessions of the running server: id, user, client, listener, since, state, octets sent."
    )
    @OptionGroup var options: ConfigOption
    @Flag(help: "One JSON array instead of a table.")
    var json = false

    func run() throws {
        let sessions = try ControlCommand.send(ControlRequest(command: .who), options: self.options).sessions ?? []
        if self.json {
            try ControlCommand.printJSON(sessions)
            return
        }
        let formatter = ISO8601DateFormatter()
        print("ID\tUSER\tCLIENT\tLISTENER\tSINCE\tSTATE\tSENT")
        for s in sessions {
            let since = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(s.since)))
            print("\(s.id)\t\(s.user ?? "-")\t\(s.client ?? "-")\t\(s.listener)\t\(since)\t\(s.state)\t\(s.octetsSent)")
        }
    }
}

struct Kick: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Close a user's sessions (or one session): their DELEs are not applied, the maildrop is unlocked.",
        discussion: "Returns once the sessions have released their maildrops, so the user can log in again at once. Exit 1 when no session matched."
    )
    @Argument(help: "The user whose sessions to close.")
    var user: String?
    @Option(help: "Close only the session with this id (see pop3d who).")
    var session: UInt64?
    @OptionGroup var options: ConfigOption

    func validate() throws {
        guard (self.user == nil) != (self.session == nil) else {
            throw ValidationError("give a USER or --session ID, not both")
        }
    }

    func run() throws {
        let kicked = try ControlCommand.send(ControlRequest(command: .kick, user: self.user, session: self.session), options: self.options).kicked ?? 0
        guard kicked > 0 else {
            FileHandle.standardError.write(Data("pop3d: no such session\n".utf8))
            throw ExitCode(1)
        }
        print("closed \(kicked) session\(kicked == 1 ? "" : "s")")
    }
}

struct Penalty: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show or clear the authentication penalty of client addresses.",
        subcommands: [List.self, Clear.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Addresses with failed logins in the last hour (IPv6 by /48).")
        @OptionGroup var options: ConfigOption
        @Flag(help: "One JSON array instead of a table.")
        var json = false

        func run() throws {
            let penalties = try ControlCommand.send(ControlRequest(command: .penaltyList), options: self.options).penalties ?? []
            if self.json {
                try ControlCommand.printJSON(penalties)
                return
            }
            print("ADDRESS\tFAILURES\tLAST FAILURE")
            for p in penalties { print("\(p.address)\t\(p.failures)\t\(p.secondsSinceLastFailure) s ago") }
        }
    }

    struct Clear: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Forget an address's failed logins (its next login waits for nothing).")
        @Argument(help: "The client address (an IPv6 address clears its /48).")
        var address: String
        @OptionGroup var options: ConfigOption

        func run() throws {
            let cleared = try ControlCommand.send(ControlRequest(command: .penaltyClear, address: self.address), options: self.options).cleared ?? false
            print(cleared ? "cleared \(self.address)" : "\(self.address) had no failures")
        }
    }
}
