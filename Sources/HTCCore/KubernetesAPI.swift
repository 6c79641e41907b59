import AsyncHTTPClient
import Foundation
import GridKernel
import NIOCore
import NIOHTTP1
import NIOSSL

/// A small client of the Kubernetes API server from inside a pod, shared by the agents' pod deletion
/// cost (``PodDeletionCost``) and the server's Deployment scaler (``KubernetesDeploymentScaler``).
///
/// It finds the API the way client-go's in-cluster configuration does: `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT`, the service account's token and CA from
/// `/var/run/secrets/kubernetes.io/serviceaccount`. The token is read again for every request, because
/// the kubelet rotates projected tokens. Tests point it elsewhere with `HTC_KUBERNETES_API`,
/// `HTC_KUBERNETES_TOKEN_FILE` and `HTC_KUBERNETES_CA_FILE`.
final class KubernetesAPI: Sendable {
    /// Where a pod finds its service account's token, CA and namespace.
    static let serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// Where the API is and how to authenticate, before any connection is made.
    struct Location: Sendable {
        /// `https://HOST:PORT`, or `HTC_KUBERNETES_API`; `nil` outside a pod.
        var api: String?
        /// The bearer token's file.
        var tokenFile: String
        /// The CA that signed the API server's certificate, when readable; else the system's CAs.
        var caFile: String?

        /// What is missing to reach the API, for an error message; empty when nothing is.
        var missing: [String] {
            var missing: [String] = []
            if api == nil { missing.append("KUBERNETES_SERVICE_HOST (not in a pod?)") }
            if !FileManager.default.isReadableFile(atPath: tokenFile) { missing.append("the service account token \(tokenFile)") }
            return missing
        }

        /// Reads the location from `environment` and the service account's files.
        init(environment: Environment) {
            api =
                environment.string("HTC_KUBERNETES_API")
                ?? environment.string("KUBERNETES_SERVICE_HOST").map { host in
                    let port = environment.string("KUBERNETES_SERVICE_PORT") ?? "443"
                    return host.contains(":") ? "https://[\(host)]:\(port)" : "https://\(host):\(port)"
                }
            tokenFile = environment.string("HTC_KUBERNETES_TOKEN_FILE") ?? KubernetesAPI.serviceAccount + "/token"
            let ca = environment.string("HTC_KUBERNETES_CA_FILE") ?? KubernetesAPI.serviceAccount + "/ca.crt"
            caFile = FileManager.default.isReadableFile(atPath: ca) ? ca : nil
        }
    }

    /// The pod's namespace, from the service account's namespace file; `nil` outside a pod.
    static func serviceAccountNamespace() -> String? {
        guard let text = try? String(contentsOfFile: serviceAccount + "/namespace", encoding: .utf8) else { return nil }
        let namespace = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return namespace.isEmpty ? nil : namespace
    }

    /// The API's base URL.
    let api: String
    private let tokenFile: String
    private let client: HTTPClient

    /// A client of the API at `location`.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` naming what is missing.
    init(_ location: Location) throws {
        guard location.missing.isEmpty, let api = location.api else {
            throw GridError.invalidArgument("cannot reach the Kubernetes API: no " + location.missing.joined(separator: ", "))
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile = location.caFile { tls.trustRoots = .file(caFile) }
        self.api = api
        self.tokenFile = location.tokenFile
        self.client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
    }

    /// What a request is for, in the terms of an RBAC rule, so that a refusal says what to allow.
    struct Permission: Sendable {
        /// The RBAC verb: `get`, `patch`, …
        var verb: String
        /// The resource, with its subresource: `pods`, `deployments/scale`.
        var resource: String
        /// The API group: `""` for the core group, `apps`, …
        var group: String
        /// The object's name, for `resourceNames`.
        var name: String
        /// What the request does, for messages: "pod deletion cost", "agent scaling".
        var purpose: String
    }

    /// Sends a request to `path` (below the API's URL) and returns the body of a 2xx answer.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when the API cannot be reached or answers
    ///   an error other than the following; ``GridKernel/GridError/Code/unauthorized`` for 401 (the
    ///   token) and 403 (the message names the RBAC rule that is missing);
    ///   ``GridKernel/GridError/Code/notFound`` for 404.
    func send(
        _ method: HTTPMethod, _ path: String, body: String? = nil, contentType: String? = nil, permission: Permission
    ) async throws -> ByteBuffer {
        let url = api + path
        let what = "\(method.rawValue) \(url) (\(permission.purpose))"
        let token: String
        do {
            token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw GridError.unavailable("\(what): cannot read the service account token \(tokenFile): \(error)")
        }
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "application/json")
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response: HTTPClientResponse
        let answer: ByteBuffer
        do {
            response = try await client.execute(request, timeout: .seconds(10))
            answer = try await response.body.collect(upTo: 1 << 20)
        } catch {
            throw GridError.unavailable("\(what): the Kubernetes API cannot be reached: \(error)", underlying: error)
        }
        let status = response.status.code
        guard !(200..<300).contains(status) else { return answer }
        let detail = Self.message(answer)
        switch status {
        case 401:
            throw GridError(.unauthorized, "\(what) answered 401: the API refused the service account token (\(detail))")
        case 403:
            let group = permission.group.isEmpty ? #""""# : permission.group
            throw GridError(
                .unauthorized,
                "\(what) answered 403: the pod's service account may not \(permission.verb) \(permission.resource) "
                    + "\"\(permission.name)\"; bind it to a Role with apiGroups [\(group)], resources [\(permission.resource)], "
                    + "verbs [\(permission.verb)] (deployment/kubernetes has one) (\(detail))"
            )
        case 404:
            throw GridError.notFound("\(what) answered 404: no \(permission.resource) \"\(permission.name)\" there (\(detail))")
        default:
            throw GridError.unavailable("\(what) answered \(status): \(detail)")
        }
    }

    /// The `message` of a Kubernetes `Status` answer, or the start of the body.
    private static func message(_ body: ByteBuffer) -> String {
        struct Status: Decodable { var message: String? }
        if let status = try? JSONDecoder().decode(Status.self, from: Data(body.readableBytesView)), let message = status.message {
            return message
        }
        return String(String(buffer: body).prefix(500))
    }

    /// Closes the HTTP client.
    func shutdown() async {
        try? await client.shutdown()
    }
}
