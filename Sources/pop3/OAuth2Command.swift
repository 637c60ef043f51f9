import ArgumentParser
import Foundation
import MailRetriever

struct OAuth2Command: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "oauth2",
        abstract: "OAuth 2.0 for accounts with provider: in the accounts file.",
        subcommands: [Login.self]
    )

    struct Login: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Authorize pop3 for an account: prints a URL to open (and a code for the device flow), then keeps the refresh token (mode 0600) in the state folder; pop3 fetch refreshes the access token from it."
        )

        @Argument(help: "The account's name in the accounts file.")
        var account: String
        @Option(help: "Accounts file (default ~/.config/pop3/accounts.yaml).")
        var config: String?

        func run() async throws {
            let path = self.config ?? AccountsFile.defaultPath()
            let accounts = try AccountsFile.load(path: path)
            guard let account = accounts.first(where: { $0.name == self.account }) else {
                throw ValidationError("no account \"\(self.account)\" in \(path)")
            }
            guard let provider = account.oauth2 else {
                throw ValidationError("account \(account.name) has no provider: (microsoft, google or custom) in \(path)")
            }
            let state = try StatePaths.directory()
            let flows = OAuth2Flows(provider: provider) { text in
                FileHandle.standardError.write(Data("pop3: \(text)\n".utf8))
            }
            let now: @Sendable () -> Int64 = { FetchClock.system.unixSeconds() }
            do {
                let tokens: OAuth2Tokens
                switch provider.flow {
                case .device: tokens = try await flows.deviceFlow(now: now)
                case .authorizationCode: tokens = try await flows.authorizationCodeFlow(now: now)
                }
                guard tokens.refreshToken != nil else {
                    throw OAuth2Error.server("no refresh token was issued (the scope may lack offline_access); pop3 fetch could not renew the access token")
                }
                try tokens.save(account.url.accountKey, stateDirectory: state)
                print("pop3: \(account.name): authorized; tokens kept in \(OAuth2Tokens.path(for: account.url.accountKey, stateDirectory: state))")
            } catch let error as OAuth2Error {
                FileHandle.standardError.write(Data("pop3: \(account.name): \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
