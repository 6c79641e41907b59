import GridKernel
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import Prometheus
import ServiceLifecycle

/// `GET /metrics` of an agent (`htc-agent --metrics-listen HOST:PORT`): the kernel's counters
/// (``GridKernel/GridMetricName``) in the Prometheus text format, for a Prometheus to scrape per pod.
enum MetricsEndpoint {
    /// Bootstraps swift-metrics with a Prometheus registry and returns the HTTP service exporting it.
    /// Call once per process, before the components that record metrics are made.
    ///
    /// - Throws: ``GridKernel/GridError/Code/invalidArgument`` for an address that is not `HOST:PORT`.
    static func bootstrap(listen: String, logger: Logger) throws -> some Service {
        let address = try ListenAddress(listen, flag: "--metrics-listen")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let router = Router()
        router.get("metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer()))
            )
        }
        return Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(address.host, port: address.port), serverName: "htc-agent"),
            logger: logger
        )
    }
}
