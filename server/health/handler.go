package health

import (
	"net/http"

	"connectrpc.com/connect"
	healthv1 "google.golang.org/grpc/health/grpc_health_v1"
)

// ServiceName is the fully-qualified name of the gRPC health service.
const ServiceName = "grpc.health.v1.Health"

// NewHandler returns the path and handler that serve m as
// grpc.health.v1.Health over the Connect, gRPC and gRPC-Web protocols.
//
// It uses grpc-go's generated messages, which keep the protocol's own enum
// names, so JSON clients see {"status":"SERVING"} as the protocol intends
// (connectrpc.com/grpchealth renames them SERVING_STATUS_SERVING).
func NewHandler(m *Monitor, opts ...connect.HandlerOption) (string, http.Handler) {
	methods := healthv1.File_grpc_health_v1_health_proto.Services().ByName("Health").Methods()
	check := connect.NewUnaryHandler(
		healthv1.Health_Check_FullMethodName, m.Check,
		append(opts, connect.WithSchema(methods.ByName("Check")), connect.WithIdempotency(connect.IdempotencyNoSideEffects))...,
	)
	list := connect.NewUnaryHandler(
		healthv1.Health_List_FullMethodName, m.List,
		append(opts, connect.WithSchema(methods.ByName("List")), connect.WithIdempotency(connect.IdempotencyNoSideEffects))...,
	)
	watch := connect.NewServerStreamHandler(
		healthv1.Health_Watch_FullMethodName, m.Watch,
		append(opts, connect.WithSchema(methods.ByName("Watch")))...,
	)
	mux := http.NewServeMux()
	mux.Handle(healthv1.Health_Check_FullMethodName, check)
	mux.Handle(healthv1.Health_List_FullMethodName, list)
	mux.Handle(healthv1.Health_Watch_FullMethodName, watch)
	return "/" + ServiceName + "/", mux
}

// Plain HTTP probes for orchestrators and proxies that do not speak gRPC
// (a Kubernetes httpGet probe, nginx, a shell script with curl).
const (
	// LivePath answers 200 while the process serves HTTP at all: a
	// failing store does not make restarting the server useful.
	LivePath = "/livez"
	// ReadyPath answers 200 while every store answers and the server is
	// not draining, 503 otherwise, so a load balancer sends requests
	// elsewhere; the body says why. (A server that drains goes on serving
	// for its drain delay, app.Config.DrainDelay, so that a balancer
	// polling this sees it.)
	ReadyPath = "/readyz"
)

// LiveHandler serves LivePath.
func LiveHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write([]byte("ok\n"))
	})
}

// ReadyHandler serves ReadyPath from m's last round of pings.
func ReadyHandler(m *Monitor) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		status, why := m.readiness()
		if status != healthv1.HealthCheckResponse_SERVING {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		w.Write([]byte(why + "\n"))
	})
}
