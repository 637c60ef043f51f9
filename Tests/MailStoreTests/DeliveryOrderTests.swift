import Testing

@testable import MailStore

@Suite struct DeliveryOrderTests {
    @Test func uniqueNamesSortByTimeThenMicrosecondsThenCounterNumerically() {
        let names = [
            "1700000001.M5P1Q1.host",
            "1700000000.M100P7Q2.host,S=10",
            "1700000000.M99P7Q1.host",
            "1700000000.M100P7Q10.host",
            "1700000000.M100P7Q9.host",
        ]
        #expect(names.sorted(by: MaildirName.deliveryOrder) == [
            "1700000000.M99P7Q1.host",
            "1700000000.M100P7Q2.host,S=10",
            "1700000000.M100P7Q9.host",
            "1700000000.M100P7Q10.host",
            "1700000001.M5P1Q1.host",
        ])
    }

    @Test func namesWithoutTheUsualFieldsStillSort() {
        #expect(["b", "a", "10.x", "9.y"].sorted(by: MaildirName.deliveryOrder) == ["a", "b", "9.y", "10.x"])
    }
}
