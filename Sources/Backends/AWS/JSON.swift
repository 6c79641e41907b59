import Foundation
import GridKernel

/// A JSON value: the bodies of the AWS JSON protocols (SQS, DynamoDB) and of credentials endpoints.
enum JSON: Sendable, Hashable, Codable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByDictionaryLiteral, ExpressibleByArrayLiteral, ExpressibleByBooleanLiteral
{
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    init(stringLiteral value: String) { self = .string(value) }
    init(integerLiteral value: Int) { self = .int(value) }
    init(booleanLiteral value: Bool) { self = .bool(value) }
    init(arrayLiteral elements: JSON...) { self = .array(elements) }
    init(dictionaryLiteral elements: (String, JSON)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { $1 }))
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSON].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSON].self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses JSON bytes.
    ///
    /// - Throws: ``GridError/Code/internalError`` when the bytes are not JSON.
    static func parse(_ bytes: [UInt8], context: String) throws -> JSON {
        if bytes.isEmpty { return .object([:]) }
        do {
            return try JSONDecoder().decode(JSON.self, from: Data(bytes))
        } catch {
            throw GridError(.internalError, "\(context) answered with malformed JSON: \(String(decoding: bytes.prefix(200), as: UTF8.self))", backend: "aws")
        }
    }

    /// The value as JSON bytes.
    func bytes() -> [UInt8] {
        // Encoding a JSON tree cannot fail: every case maps to a JSON value.
        (try? Array(JSONEncoder().encode(self))) ?? Array("null".utf8)
    }

    subscript(key: String) -> JSON? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    var string: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    var int: Int? {
        switch self {
        case .int(let value): value
        case .double(let value): Int(exactly: value)
        case .string(let value): Int(value)
        default: nil
        }
    }

    var bool: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    var array: [JSON] {
        if case .array(let value) = self { return value }
        return []
    }

    var object: [String: JSON] {
        if case .object(let value) = self { return value }
        return [:]
    }
}
