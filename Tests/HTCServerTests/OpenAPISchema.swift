import Foundation
import GridKernel
import Testing
import Yams

@testable import HTCServer

/// The response schemas of openapi.yaml and a validator for the subset of JSON Schema the document uses
/// (type, enum, required, properties, additionalProperties, items, $ref, oneOf), so tests can check that
/// what the server answers is what the document promises.
struct OpenAPISchemas {
    let document: [String: Any]

    init() throws {
        document = try #require(try Yams.load(yaml: OpenAPIDocument.yaml) as? [String: Any])
    }

    /// The JSON schema of the response to `method path` with `status`, following `$ref`s to shared responses.
    func responseSchema(path: String, method: String, status: Int) throws -> [String: Any] {
        let paths = try #require(document["paths"] as? [String: Any])
        let operation = try #require((paths[path] as? [String: Any])?[method.lowercased()] as? [String: Any], "\(method) \(path) is not documented")
        let responses = try #require(operation["responses"] as? [String: Any])
        var response = try #require(responses[String(status)] as? [String: Any], "\(method) \(path) does not document status \(status)")
        if let ref = response["$ref"] as? String { response = try #require(resolve(ref)) }
        let content = try #require(response["content"] as? [String: Any])
        let json = try #require(content["application/json"] as? [String: Any], "\(method) \(path) \(status) is not JSON")
        return try #require(json["schema"] as? [String: Any])
    }

    private func resolve(_ ref: String) -> [String: Any]? {
        guard ref.hasPrefix("#/") else { return nil }
        var node: Any? = document
        for part in ref.dropFirst(2).split(separator: "/") { node = (node as? [String: Any])?[String(part)] }
        return node as? [String: Any]
    }

    /// The violations of `schema` by `value`, each naming where it is; empty when the value conforms.
    func violations(of schema: [String: Any], by value: JSONValue, at location: String = "$") -> [String] {
        if let ref = schema["$ref"] as? String {
            guard let target = resolve(ref) else { return ["\(location): unresolvable \(ref)"] }
            return violations(of: target, by: value, at: location)
        }
        var problems: [String] = []
        if let types = schema["type"].map({ ($0 as? [String]) ?? [$0 as? String].compactMap { $0 } }), !types.isEmpty {
            guard types.contains(where: { Self.matches(value, type: $0) }) else { return ["\(location): expected \(types), got \(value)"] }
        }
        if let allowed = schema["enum"] as? [Any] {
            let names = allowed.map { "\($0)" }
            if case .string(let text) = value, !names.contains(text) { problems.append("\(location): '\(text)' is not one of \(names)") }
        }
        if let options = schema["oneOf"] as? [[String: Any]] {
            let matching = options.filter { violations(of: $0, by: value, at: location).isEmpty }.count
            if matching != 1 { problems.append("\(location): matches \(matching) of oneOf, not exactly one") }
        }
        switch value {
        case .object(let object):
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for name in schema["required"] as? [String] ?? [] where object[name] == nil {
                problems.append("\(location).\(name): required but missing")
            }
            for (name, item) in object {
                if let property = properties[name] as? [String: Any] {
                    problems += violations(of: property, by: item, at: "\(location).\(name)")
                } else if let additional = schema["additionalProperties"] as? [String: Any] {
                    problems += violations(of: additional, by: item, at: "\(location).\(name)")
                } else if schema["additionalProperties"] as? Bool == false {
                    problems.append("\(location).\(name): not in the schema")
                }
            }
        case .array(let items):
            if let itemSchema = schema["items"] as? [String: Any] {
                for (index, item) in items.enumerated() { problems += violations(of: itemSchema, by: item, at: "\(location)[\(index)]") }
            }
        default:
            break
        }
        return problems
    }

    private static func matches(_ value: JSONValue, type: String) -> Bool {
        switch (type, value) {
        case ("null", .null), ("boolean", .bool), ("string", .string), ("array", .array), ("object", .object): true
        case ("integer", .int), ("number", .int), ("number", .double): true
        case ("integer", .double(let number)): number == number.rounded()
        default: false
        }
    }
}
