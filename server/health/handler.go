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
