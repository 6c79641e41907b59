import Foundation
import GridKernel

/// The bodies of the AWS JSON protocols (SQS, DynamoDB) and of credentials endpoints: the kernel's
/// JSON value.
typealias JSON = JSONValue

extension JSONValue {
    /// Parses an AWS answer; an empty body is an empty object.
    ///
    /// - Throws: ``GridKernel/GridError/Code/internalError`` naming `context` when the bytes are not JSON.
    static func parse(_ bytes: [UInt8], context: String) throws -> JSONValue {
        if bytes.isEmpty { return .object([:]) }
        do {
            return try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            throw GridError(.internalError, "\(context) answered with malformed JSON: \(String(decoding: bytes.prefix(200), as: UTF8.self))", backend: "aws")
        }
    }
}
