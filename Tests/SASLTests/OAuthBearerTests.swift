import Testing

@testable import SASL

@Suite struct OAuthBearerTests {
    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// RFC 7628 §4.1's example shape, and XOAUTH2's.
    @Test func messagesRoundTrip() throws {
        let bearer = OAuthBearerMessage.oauthBearer(user: "user@example.com", token: "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", host: "server.example.com", port: 143)
        #expect(self.text(bearer) == "n,a=user@example.com,\u{1}host=server.example.com\u{1}port=143\u{1}auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\u{1}\u{1}")
        #expect(OAuthBearerMessage.parse(bearer, mechanism: .oauthBearer) == OAuthBearerMessage(user: "user@example.com", token: "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="))
        let x = OAuthBearerMessage.xoauth2(user: "someuser@example.com", token: "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg")
        #expect(OAuthBearerMessage.parse(x, mechanism: .xoauth2) == OAuthBearerMessage(user: "someuser@example.com", token: "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg"))
        // Without an authzid, and with the scheme in another case.
        #expect(OAuthBearerMessage.parse(Array("n,,\u{1}auth=bearer abc.def-_~+/=\u{1}\u{1}".utf8), mechanism: .oauthBearer)?.token == "abc.def-_~+/=")
    }

    @Test func malformedMessagesAreRefused() {
        for message in [
            "p=tls-unique,,\u{1}auth=Bearer abc\u{1}\u{1}",  // channel binding: not defined for OAUTHBEARER
            "n,,\u{1}host=x\u{1}\u{1}",  // no token
            "n,,\u{1}auth=Basic abc\u{1}\u{1}",  // not a bearer token
            "n,,\u{1}auth=Bearer a b\u{1}\u{1}",  // not a b64token
            "n,,\u{1}auth=Bearer \u{1}\u{1}",  // empty token
            "n,,auth=Bearer abc\u{1}\u{1}",  // no separator after the header
            "n,,\u{1}auth=Bearer abc\u{1}",  // no terminator
            "n,,\u{1}noequals\u{1}\u{1}",
        ] {
            #expect(OAuthBearerMessage.parse(Array(message.utf8), mechanism: .oauthBearer) == nil, "\(message.debugDescription)")
        }
        #expect(OAuthBearerMessage.parse(Array("user=a\u{1}auth=Bearer t".utf8), mechanism: .xoauth2) == nil)
        #expect(OAuthBearerMessage.parse(Array("user=a\u{1}auth=Bearer t\u{1}\u{1}".utf8), mechanism: .plain) == nil)
        #expect(OAuthBearerMessage.parse([0xFF, 0xFE], mechanism: .xoauth2) == nil)
    }

    @Test func errorChallengeAndAcknowledgement() {
        #expect(self.text(OAuthBearerMessage.errorChallenge(mechanism: .oauthBearer)) == #"{"status":"invalid_token","schemes":"bearer"}"#)
        #expect(OAuthBearerMessage.errorAcknowledgement(mechanism: .oauthBearer) == [1])
        #expect(OAuthBearerMessage.errorAcknowledgement(mechanism: .xoauth2) == [])
        #expect(!"\(OAuthBearerMessage(user: "u", token: "secret-token"))".contains("secret-token"))
    }

    @Test func endpointURLs() {
        #expect(OAuth2URL.problem("https://idp.example.com/token") == nil)
        #expect(OAuth2URL.problem("http://127.0.0.1:8080/token") == nil)
        #expect(OAuth2URL.problem("http://localhost/token") == nil)
        #expect(OAuth2URL.problem("http://[::1]:99/t") == nil)
        #expect(OAuth2URL.problem("http://127.evil.example/token") != nil)
        #expect(OAuth2URL.problem("http://127.0.0.1.evil.example/token") != nil)
        #expect(OAuth2URL.problem("http://idp.example.com/token") != nil)
        #expect(OAuth2URL.problem("ftp://x/y") != nil)
        #expect(OAuth2URL.problem("no url") != nil)
    }

    @Test func formEncoding() {
        #expect(OAuth2URL.formEncode([("grant_type", "refresh_token"), ("refresh_token", "a+b/c=d&e f~._-é")])
            == "grant_type=refresh_token&refresh_token=a%2Bb%2Fc%3Dd%26e%20f~._-%C3%A9")
    }
}
