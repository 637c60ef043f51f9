import Foundation
import Testing

@testable import MailRetriever

@Suite struct AccountDiscoveryTests {
    @Test(arguments: [
        ("demo", true),
        ("carol@example.test", true),
        ("ümlaut@example.test", true),
        (String(repeating: "a", count: AccountDiscovery.maximumUserNameOctets), true),
        (String(repeating: "a", count: AccountDiscovery.maximumUserNameOctets + 1), false),
        ("", false),
        ("two words", false),
        ("tab\there", false),
        ("line\nbreak", false),
        ("cr\rhere", false),
        ("nul\u{0}", false),
        ("del\u{7F}", false),
        ("c1\u{85}", false),
        ("nbsp\u{A0}", false),
    ])
    func userNamesFromAnAutoconfigDocument(name: String, usable: Bool) {
        #expect(AccountDiscovery.isUsableUserName(name) == usable)
    }

    @Test func usernameTemplatesAreFilledIn() {
        let document = """
            <clientConfig version="1.1"><emailProvider id="example.test">
            <incomingServer type="pop3"><hostname>pop.example.test</hostname><port>995</port><socketType>SSL</socketType>
            <username>%EMAILLOCALPART%</username></incomingServer></emailProvider></clientConfig>
            """
        let found = AccountDiscovery.parseClientConfig(Data(document.utf8), address: "carol@example.test")
        #expect(found.map(\.username) == ["carol"])
        #expect(AccountDiscovery.isUsableUserName(found[0].username ?? ""))
    }
}
