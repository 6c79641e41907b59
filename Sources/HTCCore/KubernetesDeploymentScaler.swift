import Foundation
import GridKernel
import Logging

/// A ``GridKernel/Scaler`` that sets the replicas of the agents' Kubernetes Deployment, through the
/// Deployment's `scale` subresource in the in-cluster API (``KubernetesAPI``: the service account's
/// token and CA from their standard paths). `htc-server --scale-deployment NAME` runs it: the server's
/// autoscaler then carries its decisions out itself, instead of KEDA reading `GET /v1/scaling`.
///
/// ``capacity()`` reads `GET /apis/apps/v1/namespaces/NS/deployments/NAME/scale`: `spec.replicas` is
/// the desired count, `status.replicas` the pods running. ``apply(desired:)`` sends a merge patch
/// `{"spec":{"replicas":N}}` to the same URL when the count differs. The service account needs `get`
/// and `patch` on `deployments/scale` of that Deployment (the Role `htc-server-scale-agents` in
/// `deployment/kubernetes/overlays/local-server-scaling`).
///
/// Scaling in is safe because the agents mark their pods with `controller.kubernetes.io/pod-deletion-cost`
/// while they own tasks (``PodDeletionCost``): the ReplicaSet removes idle pods first, and an agent
/// removed anyway drains its running tasks on SIGTERM within its grace period.
public final class KubernetesDeploymentScaler: Scaler {
    /// The Deployment's namespace.
    public let namespace: String
    /// The Deployment's name.
    public let deployment: String
    private let api: KubernetesAPI
    private let path: String
    private let logger: Logger

    private init(api: KubernetesAPI, namespace: String, deployment: String, logger: Logger) {
        self.api = api
        self.namespace = namespace
        self.deployment = deployment
        self.path = "/apis/apps/v1/namespaces/\(namespace)/deployments/\(deployment)/scale"
        self.logger = logger
    }

    /// The scaler of the Deployment `deployment` in the namespace `HTC_KUBERNETES_NAMESPACE`, or else
    /// the pod's own (the service account's namespace file).
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` outside a pod (it names what is missing:
    ///   the API's address, the token, the namespace) or for an empty name.
    public static func make(deployment: String, environment: Environment, logger: Logger = Logger(label: "htc.scaler")) throws
        -> KubernetesDeploymentScaler
    {
        guard !deployment.isEmpty, !deployment.contains("/") else {
            throw GridError.invalidArgument("--scale-deployment \(deployment) is not the name of a Deployment")
        }
        let location = KubernetesAPI.Location(environment: environment)
        var missing = location.missing
        let namespace = environment.string("HTC_KUBERNETES_NAMESPACE") ?? KubernetesAPI.serviceAccountNamespace()
        if namespace == nil { missing.append("namespace (HTC_KUBERNETES_NAMESPACE or \(KubernetesAPI.serviceAccount)/namespace)") }
        guard missing.isEmpty, let namespace else {
            throw GridError.invalidArgument("--scale-deployment \(deployment) needs the Kubernetes API from inside a pod; missing: " + missing.joined(separator: ", "))
        }
        return KubernetesDeploymentScaler(api: try KubernetesAPI(location), namespace: namespace, deployment: deployment, logger: logger)
    }

    /// The URL of the Deployment's scale subresource.
    public var url: String { api.api + path }

    /// The Deployment's replicas: `spec.replicas` as desired, `status.replicas` as current.
    ///
    /// - Throws: ``GridKernel/GridError/Code/unavailable`` when the API cannot be reached or its answer
    ///   cannot be read; ``GridKernel/GridError/Code/unauthorized`` when RBAC refuses `get` on
    ///   `deployments/scale`; ``GridKernel/GridError/Code/notFound`` without such a Deployment.
    public func capacity() async throws -> AgentCapacity {
        let body = try await api.send(.GET, path, permission: permission("get"))
        /// The `autoscaling/v1` Scale; `spec.replicas` is left out when it is 0.
        struct Scale: Decodable {
            struct Replicas: Decodable { var replicas: Int? }
            var spec: Replicas?
            var status: Replicas?
        }
        do {
            let scale = try JSONDecoder().decode(Scale.self, from: Data(body.readableBytesView))
            return AgentCapacity(desired: scale.spec?.replicas ?? 0, current: scale.status?.replicas ?? 0)
        } catch {
            throw GridError.unavailable("GET \(url) (agent scaling) answered a body that is not a Scale: \(error)", underlying: error)
        }
    }

    /// Sets the Deployment's `spec.replicas` to `desired`, unless it already is.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for a negative count;
    ///   ``GridKernel/GridError/Code/unavailable`` when the API cannot be reached;
    ///   ``GridKernel/GridError/Code/unauthorized`` when RBAC refuses `get` or `patch` on
    ///   `deployments/scale` (the message names the rule); ``GridKernel/GridError/Code/notFound``.
    public func apply(desired: Int) async throws {
        guard desired >= 0 else { throw GridError.invalidArgument("desired agents must not be negative, got \(desired)") }
        let now = try await capacity()
        guard now.desired != desired else { return }
        _ = try await api.send(
            .PATCH, path, body: #"{"spec":{"replicas":\#(desired)}}"#, contentType: "application/merge-patch+json",
            permission: permission("patch")
        )
        logger.info(
            "scaled the agent Deployment",
            metadata: ["deployment": "\(namespace)/\(deployment)", "from": "\(now.desired)", "to": "\(desired)", "running": "\(now.current)"]
        )
    }

    /// Closes the HTTP client.
    public func shutdown() async {
        await api.shutdown()
    }

    private func permission(_ verb: String) -> KubernetesAPI.Permission {
        KubernetesAPI.Permission(verb: verb, resource: "deployments/scale", group: "apps", name: deployment, purpose: "agent scaling")
    }
}
