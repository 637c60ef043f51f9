import ArgumentParser
import Foundation
import POP3Server
import SystemIO

/// `pop3d db migrate --config FILE`: the PostgreSQL backend's schema.
struct Database: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db",
        abstract: "The PostgreSQL backend (storage.backend: postgres).",
        subcommands: [Migrate.self]
    )

    struct Migrate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create or upgrade pop3d's schema in the database (safe to run again; pop3d serve refuses an older schema)."
        )
        @OptionGroup var options: ConfigOption

        func run() throws {
            let options = self.options
            do {
                let configuration = try runBlocking { try await options.load() }
                let (from, to) = try AccountEditor(configuration: configuration).migrateDatabase()
                print(from == to ? "schema is current (version \(to))" : "schema migrated from version \(from) to \(to)")
            } catch let error as ConfigurationError {
                FileHandle.standardError.write(Data("pop3d: configuration error: \(error)\n".utf8))
                throw ExitCode(78)
            } catch {
                FileHandle.standardError.write(Data("pop3d db migrate: \(error)\n".utf8))
                throw ExitCode(75)
            }
        }
    }
}
