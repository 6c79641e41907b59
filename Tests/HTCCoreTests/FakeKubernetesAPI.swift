import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import NIOCore
import Synchronization

@testable import HTCCore

/// A stand-in for the Kubernetes API server on 127.0.0.1: it records every request, patches pods
/// (accepting anything) and serves the `scale` subresource of the Deployments it holds, the way the API
/// server does (`autoscaling/v1` Scale, `spec.replicas` left out when 0). Verbs in ``forbid(_:)`` answer
/// 403 with a `Status` body.
final class FakeKubernetesAPI: Sendable {
    struct Request: Sendable, Equatable {
        var method: String
        var path: String
        var authorization: String
        var contentType: String
        var body: String
    }

    struct Deployment: Sendable, Equatable {
        var replicas: Int
        var running: Int
    }

    private struct State {
        var requests: [Request] = []
        var deployments: [String: Deployment] = [:]
        var forbidden: Set<String> = []
    }

    private let state = Mutex(State())

    /// Every request so far.
    var requests: [Request] { state.withLock { $0.requests } }
    /// The PATCH requests so far.
    var patches: [Request] { requests.filter { $0.method == "PATCH" } }

    /// The Deployment `namespace/name`.
    func deployment(_ key: String) -> Deployment? { state.withLock { $0.deployments[key] } }
    /// Creates or replaces the Deployment `namespace/name`.
    func setDeployment(_ key: String, _ deployment: Deployment) { state.withLock { $0.deployments[key] = deployment } }
    /// Answers 403 to `verb` (`get`, `patch`) from now on.
    func forbid(_ verb: String) { _ = state.withLock { $0.forbidden.insert(verb) } }

    /// A token file with `secret-token`, removed by the caller.
    static func tokenFile() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("htc-token-\(UUID().uuidString.prefix(8))").path
        try "secret-token\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs `body` with the API listening; its arguments are the port and the environment that points
    /// ``KubernetesAPI`` at it (with a token file).
    func serve(_ body: @escaping @Sendable (Int, HTCCore.Environment) async throws -> Void) async throws {
        let router = Router()
        router.patch("api/v1/namespaces/{namespace}/pods/{pod}") { request, _ -> Response in
            try await self.record(request, verb: "patch").refusal ?? Response(status: .ok)
        }
        router.get("apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale") { request, context -> Response in
            if let refusal = try await self.record(request, verb: "get").refusal { return refusal }
            return try self.scale(context.parameters.require("namespace"), context.parameters.require("name"), replicas: nil)
        }
        router.patch("apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale") { request, context -> Response in
            let (text, refusal) = try await self.record(request, verb: "patch")
            if let refusal { return refusal }
            struct Patch: Decodable {
                struct Spec: Decodable { var replicas: Int }
                var spec: Spec
            }
            let body = try JSONDecoder().decode(Patch.self, from: Data(text.utf8))
            return try self.scale(context.parameters.require("namespace"), context.parameters.require("name"), replicas: body.spec.replicas)
        }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let token = try Self.tokenFile()
            defer { try? FileManager.default.removeItem(atPath: token) }
            let port = client.port ?? 0
            try await body(port, HTCCore.Environment(["HTC_KUBERNETES_API": "http://127.0.0.1:\(port)", "HTC_KUBERNETES_TOKEN_FILE": token]))
        }
    }

    /// Records the request; returns its body, and the 403 answer when `verb` is forbidden.
    private func record(_ request: Hummingbird.Request, verb: String) async throws -> (body: String, refusal: Response?) {
        let data = try await request.body.collect(upTo: 10_000)
        let entry = Request(
            method: request.method.rawValue, path: request.uri.path, authorization: request.headers[.authorization] ?? "",
            contentType: request.headers[.contentType] ?? "", body: String(buffer: data)
        )
        let forbidden = state.withLock { state in
            state.requests.append(entry)
            return state.forbidden.contains(verb)
        }
        guard forbidden else { return (entry.body, nil) }
        return (entry.body, Self.json(
            .forbidden,
            #"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"\#(verb) is forbidden: User \"system:serviceaccount:grid:htc-grid\" cannot \#(verb) resource"}"#
        ))
    }

    /// The Scale of `namespace/name`, after setting its replicas when given; 404 without it.
    private func scale(_ namespace: String, _ name: String, replicas: Int?) throws -> Response {
        let key = "\(namespace)/\(name)"
        let found: Deployment? = state.withLock { state in
            if let replicas { state.deployments[key]?.replicas = replicas }
            return state.deployments[key]
        }
        guard let found else {
            return Self.json(
                .notFound, #"{"kind":"Status","status":"Failure","reason":"NotFound","code":404,"message":"deployments.apps \"\#(name)\" not found"}"#
            )
        }
        let spec = found.replicas == 0 ? "{}" : #"{"replicas":\#(found.replicas)}"#
        return Self.json(
            .ok,
            #"{"kind":"Scale","apiVersion":"autoscaling/v1","metadata":{"name":"\#(name)","namespace":"\#(namespace)"},"spec":\#(spec),"status":{"replicas":\#(found.running),"selector":"app=\#(name)"}}"#
        )
    }

    private static func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Polls `condition` every 10 ms until it holds.
///
/// - Throws: ``GridKernel/GridError/Code/timeout`` after `timeout`.
func waitFor(_ what: String, timeout: Duration = .seconds(20), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw GridError(.timeout, "timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}
