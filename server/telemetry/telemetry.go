// Package telemetry is what a server tells its operator about itself:
// Prometheus metrics (served on the admin listener) and OpenTelemetry
// traces (exported where the standard OTEL_* environment variables say).
//
// The instrumentation is the ecosystem's: otelconnect for the RPCs (their
// spans, and the rpc_server_* metrics through OpenTelemetry's Prometheus
// exporter), otelpgx for PostgreSQL spans, redisotel for Redis spans. The
// MongoDB Go driver v2 has no maintained OpenTelemetry instrumentation, so
// its command monitor feeds spans here (MongoMonitor). The store-call
// latency histogram (parley_store_call_duration_seconds) is fed by the
// same hooks: the Mongo command monitor, a pgx query tracer and a
// go-redis hook.
//
// Tracing is off unless OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT
// or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set in the process's
// environment (and OTEL_SDK_DISABLED is not true); the exporter, its
// endpoint, protocol, headers and batching, the sampler and the resource
// then follow the other OTEL_* variables as the OpenTelemetry
// specification defines them. The propagator is fixed: W3C trace context
// and baggage (OTEL_PROPAGATORS is not read). Servers trust an incoming
// traceparent, so a client's trace continues into the server; with the
// default sampler (parentbased_always_on) a client's sampled flag is
// followed, so a deployment that must not let clients choose what is
// sampled sets OTEL_TRACES_SAMPLER=traceidratio.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ServiceName is the service.name of Parley's traces unless
// OTEL_SERVICE_NAME says otherwise.
const ServiceName = "parley"

// Telemetry is one server's metrics registry and tracer provider.
type Telemetry struct {
	registry   *prometheus.Registry
	meters     *sdkmetric.MeterProvider
	tracers    trace.TracerProvider
	sdkTracers *sdktrace.TracerProvider // nil when tracing is off
	storeCalls *prometheus.HistogramVec
	// mongoSpans holds the spans of MongoDB commands awaiting their
	// reply, by request id (see MongoMonitor); mongoStarts counts
	// commands, to sweep it now and then.
	mongoSpans  sync.Map
	mongoStarts atomic.Uint64
}

// Collectors are process-wide metrics that other packages define (as a
// Prometheus client's package-level counters); New registers each with
// every server's registry.
type Collectors []prometheus.Collector

// New returns a server's telemetry: a registry with the Go runtime's and
// the process's metrics, the store-call histogram and extra, and a tracer
// provider that exports as the process's OTEL_* environment asks, or
// none.
func New(ctx context.Context, version string, extra Collectors) (*Telemetry, error) {
	t := &Telemetry{
		registry: prometheus.NewRegistry(),
		storeCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "parley_store_call_duration_seconds",
			Help:    "Calls to the stores, by store (postgres, mongodb, redis) and operation, from the client's side: round trip included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"store", "operation"}),
	}
	t.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		t.storeCalls,
	)
	for _, c := range extra {
		if err := t.registry.Register(c); err != nil {
			return nil, fmt.Errorf("telemetry: %w", err)
		}
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(ServiceName), semconv.ServiceVersion(version)),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	// The RPC metrics come from otelconnect through OpenTelemetry's
	// meter, which this exporter shows to the registry.
	exp, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	t.meters = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))

	t.tracers = noop.NewTracerProvider()
	if tracingRequested() {
		spans, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: span exporter: %w", err)
		}
		if !autoexport.IsNoneSpanExporter(spans) {
			t.sdkTracers = sdktrace.NewTracerProvider(sdktrace.WithBatcher(spans), sdktrace.WithResource(res))
			t.tracers = t.sdkTracers
		}
	}
	return t, nil
}

// tracingRequested reports whether the process's environment asks for
// traces.
func tracingRequested() bool {
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false
	}
	for _, k := range []string{"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if os.Getenv(k) != "" {
			return true
		}
	}
	return false
}

// Tracing reports whether spans are exported.
func (t *Telemetry) Tracing() bool { return t.sdkTracers != nil }

// TracerProvider returns the provider of the server's spans (a no-op one
// when tracing is off).
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tracers }

// Propagator reads and writes W3C trace context and baggage headers.
var Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Interceptor returns the Connect interceptor that times every RPC into
// the rpc_server_* metrics and, when tracing, makes its span, a child of
// the client's traceparent when it sends one.
func (t *Telemetry) Interceptor() (connect.Interceptor, error) {
	return otelconnect.NewInterceptor(
		otelconnect.WithMeterProvider(t.meters),
		otelconnect.WithTracerProvider(t.tracers),
		otelconnect.WithPropagator(Propagator),
		otelconnect.WithTrustRemote(),
	)
}

// HTTPHandler times and traces a plain HTTP endpoint (not an RPC), such
// as uploads and downloads, with otelhttp: its span is named by the
// request's method and route, a child of the client's traceparent like an
// RPC's, and the http_server_* metrics count it.
func (t *Telemetry) HTTPHandler(route string, h http.Handler) http.Handler {
	return otelhttp.NewHandler(h, route,
		otelhttp.WithTracerProvider(t.tracers),
		otelhttp.WithMeterProvider(t.meters),
		otelhttp.WithPropagators(Propagator),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + route }),
		// Else each request's Host header, which the client writes, is a
		// label (server.address): a series per value anyone sends.
		otelhttp.WithServerName("parley"),
	)
}

// Registry returns the server's metrics registry.
func (t *Telemetry) Registry() *prometheus.Registry { return t.registry }

// Handler serves the registry in the Prometheus text format.
func (t *Telemetry) Handler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{Registry: t.registry})
}

// Shutdown flushes the spans not yet exported and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.sdkTracers != nil {
		// Commands still without a reply (the stores close after this).
		t.sweepMongoSpans(time.Now().Add(time.Hour))
		errs = append(errs, t.sdkTracers.Shutdown(ctx))
	}
	errs = append(errs, t.meters.Shutdown(ctx))
	return errors.Join(errs...)
}
