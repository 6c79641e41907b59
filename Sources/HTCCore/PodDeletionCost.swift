import AsyncHTTPClient
import Foundation
import GridKernel
import NIOCore
import NIOHTTP1
import NIOSSL

/// Marks the agent's own pod with `controller.kubernetes.io/pod-deletion-cost` while it owns tasks, so
/// that a ReplicaSet scaling in (KEDA lowering the agent Deployment's replicas) removes idle pods first.
///
/// It patches the pod through the in-cluster API: the service account's token and CA from their
/// standard paths, the pod from `MY_POD_NAME` and `MY_POD_NAMESPACE` (the Downward API; the namespace
/// falls back to the service account's namespace file). The Role `htc-agent-pod-deletion-cost` in
/// `deployment/kubernetes` allows it. Tests point it elsewhere with `HTC_KUBERNETES_API`,
/// `HTC_KUBERNETES_TOKEN_FILE` and `HTC_KUBERNETES_CA_FILE`.
public final class PodDeletionCost: Sendable {
    /// The annotation.
    public static let annotation = "controller.kubernetes.io/pod-deletion-cost"
    /// The cost while the agent owns tasks; idle agents have 0, the default of unannotated pods.
    public static let busyCost = 100

    private static let serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The pod's API URL.
    public let url: String
    private let tokenFile: String
    private let client: HTTPClient

    private init(url: String, tokenFile: String, caFile: String?) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile { tls.trustRoots = .file(caFile) }
        self.url = url
        self.tokenFile = tokenFile
        self.client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
    }

    /// The annotator for this pod, by `setting`: `auto` (the default) marks the pod when the agent runs
    /// in Kubernetes with a pod name, `on` requires it (and says what is missing), `off` never marks.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for another setting, or for `on` outside
    ///   a pod.
    public static func make(setting: String?, environment: Environment) throws -> PodDeletionCost? {
        let mode = setting ?? environment.string("HTC_POD_DELETION_COST") ?? "auto"
        guard ["auto", "on", "off"].contains(mode) else {
            throw GridError.invalidArgument("--pod-deletion-cost \(mode) is not one of auto, on, off")
        }
        if mode == "off" { return nil }
        var missing: [String] = []
        let api: String? =
            environment.string("HTC_KUBERNETES_API")
            ?? environment.string("KUBERNETES_SERVICE_HOST").map { host in
                let port = environment.string("KUBERNETES_SERVICE_PORT") ?? "443"
                return host.contains(":") ? "https://[\(host)]:\(port)" : "https://\(host):\(port)"
            }
        if api == nil { missing.append("KUBERNETES_SERVICE_HOST (not in a pod?)") }
        let pod = environment.string("MY_POD_NAME")
        if pod == nil { missing.append("MY_POD_NAME (set it from metadata.name with the Downward API)") }
        let tokenFile = environment.string("HTC_KUBERNETES_TOKEN_FILE") ?? serviceAccount + "/token"
        if !FileManager.default.isReadableFile(atPath: tokenFile) { missing.append("the service account token \(tokenFile)") }
        let namespace =
            environment.string("MY_POD_NAMESPACE")
            ?? (try? String(contentsOfFile: serviceAccount + "/namespace", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if namespace == nil { missing.append("MY_POD_NAMESPACE") }
        guard missing.isEmpty, let api, let pod, let namespace else {
            if mode == "on" {
                throw GridError.invalidArgument("--pod-deletion-cost on needs " + missing.joined(separator: ", "))
            }
            return nil
        }
        let caFile = environment.string("HTC_KUBERNETES_CA_FILE") ?? serviceAccount + "/ca.crt"
        return try PodDeletionCost(
            url: "\(api)/api/v1/namespaces/\(namespace)/pods/\(pod)",
            tokenFile: tokenFile,
            caFile: FileManager.default.isReadableFile(atPath: caFile) ? caFile : nil
        )
    }

    /// Sets the annotation: ``busyCost`` while busy, 0 when idle.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when the API cannot be reached or refuses
    ///   (the message has its answer: a 403 means the Role is missing).
    public func mark(busy: Bool) async throws {
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        var request = HTTPClientRequest(url: url)
        request.method = .PATCH
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Content-Type", value: "application/merge-patch+json")
        let cost = busy ? Self.busyCost : 0
        request.body = .bytes(ByteBuffer(string: #"{"metadata":{"annotations":{"\#(Self.annotation)":"\#(cost)"}}}"#))
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .seconds(10))
        } catch {
            throw GridError.unavailable("PATCH \(url) (pod deletion cost): \(error)")
        }
        guard (200..<300).contains(response.status.code) else {
            let body = try? await response.body.collect(upTo: 4_096)
            throw GridError.unavailable(
                "PATCH \(url) (pod deletion cost) answered \(response.status.code): \(body.map { String(buffer: $0) } ?? "")"
            )
        }
    }

    /// Closes the HTTP client.
    public func shutdown() async {
        try? await client.shutdown()
    }
}
