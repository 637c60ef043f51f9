import Foundation
import POP3FuzzTargets
import Testing

/// Every input the fuzzer ever found a crash with stays here (Tests/Fuzz/<target>/), plus seed inputs; each must
/// now run cleanly through its target.
@Suite struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fuzz")

    static var cases: [(FuzzTarget, String)] {
        FuzzTarget.allCases.flatMap { target in
            let folder = root.appendingPathComponent(target.rawValue)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
            return files.sorted().map { (target, folder.appendingPathComponent($0).path) }
        }
    }

    @Test func everyTargetHasSeeds() {
        for target in FuzzTarget.allCases {
            #expect(Self.cases.contains { $0.0 == target }, "no inputs for \(target.rawValue) in Tests/Fuzz")
        }
    }

    @Test(arguments: cases)
    func replays(target: FuzzTarget, path: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        target.run(Array(data))
    }
}
