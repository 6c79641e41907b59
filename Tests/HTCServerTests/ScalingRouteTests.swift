import Foundation
import GridKernel
import Hummingbird
import HummingbirdTesting
import Testing

@testable import HTCServer

/// `GET /v1/scaling` serves the autoscaler's decision, documented in openapi.yaml, and /metrics
/// exports it as htc_desired_agents.
@Suite struct ScalingRouteTests {
    private func api(scaling: Bool) async throws -> (GridAPI, InMemoryTaskQueue) {
        let queue = InMemoryTaskQueue()
        let backends = GridBackends(queue: queue, state: InMemoryStateStore(), payloads: InMemoryPayloadStore())
        let configuration = ScalingConfiguration(tasksPerAgent: 4, minimum: 1, maximum: 5)
        let decider = scaling
            ? ServerScaling(autoscaler: try Autoscaler(queue: queue, scaler: nil, configuration: configuration), scaler: nil, configuration: configuration)
            : nil
        return (GridAPI(client: GridClient(backends: backends), scaling: decider), queue)
    }

    @Test func servesTheDecisionAndExportsTheGauge() async throws {
        let (api, queue) = try await api(scaling: true)
        let session = SessionID.random()
        try await queue.enqueue((0..<14).map { QueuedTask(id: TaskID(session: session, index: $0), priority: 0) })
        _ = try await queue.lease(max: 2, duration: .seconds(60), order: .highestFirst, wait: .zero)
        let app = Application(router: api.makeRouter(auth: .none))
        try await app.test(.router) { client in
            let schemas = try OpenAPISchemas()
            try await client.execute(uri: "/v1/scaling", method: .get) { response in
                #expect(response.status == .ok)
                let body = try JSONDecoder().decode(ScalingBody.self, from: Data(response.body.readableBytesView))
                #expect(body == ScalingBody(desired_agents: 4, backlog: 12, in_flight: 2, current_agents: nil, minimum_agents: 1, maximum_agents: 5, tasks_per_agent: 4))
                let schema = try schemas.responseSchema(path: "/v1/scaling", method: "GET", status: 200)
                let value = try JSONDecoder().decode(JSONValue.self, from: Data(response.body.readableBytesView))
                #expect(schemas.violations(of: schema, by: value).isEmpty)
            }
            try await client.execute(uri: "/metrics", method: .get) { response in
                let text = String(buffer: response.body)
                #expect(text.contains("\(ServerMetricName.desiredAgents) 4"), "\(text)")
            }
        }
    }

    @Test func withoutAPolicyTheRouteIsNotFound() async throws {
        let (api, _) = try await api(scaling: false)
        try await Application(router: api.makeRouter(auth: .none)).test(.router) { client in
            try await client.execute(uri: "/v1/scaling", method: .get) { response in
                #expect(response.status == .notFound)
                #expect(String(buffer: response.body).contains("scaling"))
            }
        }
    }
}
