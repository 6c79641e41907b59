import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

@Suite struct OpenAPITests {
    /// The document at the repository root, the source of truth.
    static func rootDocument() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: root.appendingPathComponent("openapi.yaml"), encoding: .utf8)
    }

    /// `METHOD /path` for every operation under `paths:`.
    static func documentedOperations(_ yaml: String) -> Set<String> {
        var operations: Set<String> = []
        var inPaths = false
        var path: String?
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "paths:" {
                inPaths = true
                continue
            }
            guard inPaths else { continue }
            if let first = line.first, first != " " { break }
            if line.hasPrefix("  /"), line.hasSuffix(":"), !line.hasPrefix("   ") {
                path = String(line.dropFirst(2).dropLast())
            } else if line.hasPrefix("    "), !line.hasPrefix("     "), let path {
                let key = line.dropFirst(4).prefix { $0 != ":" }
                if ["get", "post", "put", "patch", "delete", "head"].contains(String(key)) {
                    operations.insert("\(key.uppercased()) \(path)")
                }
            }
        }
        return operations
    }

    @Test func theServedDocumentIsTheRepositorysOpenAPIFile() async throws {
        let expected = try Self.rootDocument()
        #expect(
            OpenAPIDocument.yaml.trimmingCharacters(in: .newlines) == expected.trimmingCharacters(in: .newlines),
            "openapi.yaml changed: run `make openapi` to embed it in the server"
        )
        let grid = TestGrid()
        try await grid.application(auth: .apiKeys(try AuthTests.keys())).test(.router) { client in
            let response = try await client.send(.get, "/openapi.yaml")
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/yaml; charset=utf-8")
            #expect(response.text == OpenAPIDocument.yaml)
        }
    }

    @Test func everyRouteIsDocumentedAndEveryDocumentedRouteExists() throws {
        let registered = Set(TestGrid().api.makeRouter(auth: .none).routes.map { "\($0.method) \($0.path)" })
        let documented = Self.documentedOperations(try Self.rootDocument())
        #expect(registered.count >= 11)
        #expect(registered.subtracting(documented).isEmpty, "routes missing from openapi.yaml: \(registered.subtracting(documented).sorted())")
        #expect(documented.subtracting(registered).isEmpty, "documented but not served: \(documented.subtracting(registered).sorted())")
    }
}
