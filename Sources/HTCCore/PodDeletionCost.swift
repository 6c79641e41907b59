import Foundation
import GridKernel

/// Marks the agent's own pod with `controller.kubernetes.io/pod-deletion-cost` while it owns tasks, so
/// that a ReplicaSet scaling in (KEDA, or `htc-server --scale-deployment`, lowering the agent
/// Deployment's replicas) removes idle pods first.
///
/// It patches the pod through the in-cluster API (``KubernetesAPI``: the service account's token and CA
/// from their standard paths), the pod from `MY_POD_NAME` and `MY_POD_NAMESPACE` (the Downward API; the
/// namespace falls back to the service account's namespace file). The Role `htc-agent-pod-deletion-cost`
/// in `deployment/kubernetes` allows it. Tests point it elsewhere with `HTC_KUBERNETES_API`,
/// `HTC_KUBERNETES_TOKEN_FILE` and `HTC_KUBERNETES_CA_FILE`.
public final class PodDeletionCost: Sendable {
    /// The annotation.
    public static let annotation = "controller.kubernetes.io/pod-deletion-cost"
    /// The cost while the agent owns tasks; idle agents have 0, the default of unannotated pods.
    public static let busyCost = 100

    /// The pod's API URL.
    public let url: String
    private let path: String
    private let permission: KubernetesAPI.Permission
    private let api: KubernetesAPI

    private init(api: KubernetesAPI, namespace: String, pod: String) {
        self.api = api
        self.path = "/api/v1/namespaces/\(namespace)/pods/\(pod)"
        self.url = api.api + path
        self.permission = KubernetesAPI.Permission(verb: "patch", resource: "pods", group: "", name: pod, purpose: "pod deletion cost")
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
        let location = KubernetesAPI.Location(environment: environment)
        var missing = location.missing
        let pod = environment.string("MY_POD_NAME")
        if pod == nil { missing.append("MY_POD_NAME (set it from metadata.name with the Downward API)") }
        let namespace = environment.string("MY_POD_NAMESPACE") ?? KubernetesAPI.serviceAccountNamespace()
        if namespace == nil { missing.append("MY_POD_NAMESPACE") }
        guard missing.isEmpty, let pod, let namespace else {
            if mode == "on" {
                throw GridError.invalidArgument("--pod-deletion-cost on needs " + missing.joined(separator: ", "))
            }
            return nil
        }
        return PodDeletionCost(api: try KubernetesAPI(location), namespace: namespace, pod: pod)
    }

    /// Sets the annotation: ``busyCost`` while busy, 0 when idle.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when the API cannot be reached or fails;
    ///   ``GridKernel/GridError/Code/unauthorized`` when it refuses (a 403 means the Role is missing, and
    ///   the message names the rule).
    public func mark(busy: Bool) async throws {
        let cost = busy ? Self.busyCost : 0
        _ = try await api.send(
            .PATCH, path, body: #"{"metadata":{"annotations":{"\#(Self.annotation)":"\#(cost)"}}}"#,
            contentType: "application/merge-patch+json", permission: permission
        )
    }

    /// Closes the HTTP client.
    public func shutdown() async {
        await api.shutdown()
    }
}
