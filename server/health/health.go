// Package health watches the stores Parley depends on and serves the
// standard gRPC health protocol (grpc.health.v1) from what it last saw.
//
// A Monitor pings every store on an interval, concurrently and each with a
// timeout. The server is SERVING only while every store answers; a failing
// store is logged once when it fails and once when it recovers. Check and
// Watch read the last result, so load-balancer probes never reach the
// stores.
package health

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	healthv1 "google.golang.org/grpc/health/grpc_health_v1"
)

// Probe names a store and says how to ping it.
type Probe struct {
	// Name is the store's name in logs, such as "redis".
	Name string
	// Ping returns nil when the store answers.
	Ping func(ctx context.Context) error
}

// Status is a serving status.
type Status = healthv1.HealthCheckResponse_ServingStatus

// Monitor pings the probes and serves the resulting health status.
type Monitor struct {
	probes   []Probe
	interval time.Duration
	timeout  time.Duration
	log      *slog.Logger
	services map[string]bool

	mu       sync.Mutex
	status   Status
	changed  chan struct{} // closed and replaced when status changes
	failing  map[string]bool
	shutdown bool
}

// NewMonitor returns a monitor of the probes. It reports the overall status
// for the empty service name and for each of services; other names are
// unknown. Each round of pings runs every interval, with the given timeout
// per ping. The status is NOT_SERVING until a round (see CheckNow) passes.
func NewMonitor(log *slog.Logger, interval, timeout time.Duration, probes []Probe, services ...string) *Monitor {
	m := &Monitor{
		probes:   probes,
		interval: interval,
		timeout:  timeout,
		log:      log,
		services: map[string]bool{"": true},
		status:   healthv1.HealthCheckResponse_NOT_SERVING,
		changed:  make(chan struct{}),
		failing:  make(map[string]bool),
	}
	for _, s := range services {
		m.services[s] = true
	}
	return m
}

// Run pings the stores every interval until ctx is done.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		m.CheckNow(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckNow runs one round of pings and updates the status. It reports
// whether every store answered.
func (m *Monitor) CheckNow(ctx context.Context) bool {
	errs := make([]error, len(m.probes))
	var wg sync.WaitGroup
	for i, p := range m.probes {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, m.timeout)
			defer cancel()
			errs[i] = p.Ping(pctx)
		})
	}
	wg.Wait()

	m.mu.Lock()
	defer m.mu.Unlock()
	healthy := true
	for i, p := range m.probes {
		err := errs[i]
		switch {
		case err != nil && !m.failing[p.Name]:
			m.log.Error("store unreachable", "store", p.Name, "err", err)
		case err == nil && m.failing[p.Name]:
			m.log.Info("store reachable again", "store", p.Name)
		}
		m.failing[p.Name] = err != nil
		healthy = healthy && err == nil
	}
	if !m.shutdown {
		if healthy {
			m.setLocked(healthv1.HealthCheckResponse_SERVING)
		} else {
			m.setLocked(healthv1.HealthCheckResponse_NOT_SERVING)
		}
	}
	return healthy
}

// Shutdown reports NOT_SERVING from now on, so that load balancers and
// watchers move away before the server closes.
func (m *Monitor) Shutdown() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.shutdown = true
	m.setLocked(healthv1.HealthCheckResponse_NOT_SERVING)
}

func (m *Monitor) setLocked(s Status) {
	if m.status == s {
		return
	}
	m.status = s
	close(m.changed)
	m.changed = make(chan struct{})
}

// current returns the status and a channel closed at its next change.
func (m *Monitor) current() (Status, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status, m.changed
}

// readiness returns the status with a short reason for it: "ready",
// "draining", or the stores that did not answer the last round.
func (m *Monitor) readiness() (Status, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.status == healthv1.HealthCheckResponse_SERVING:
		return m.status, "ready"
	case m.shutdown:
		return m.status, "draining"
	}
	var down []string
	for _, p := range m.probes {
		if m.failing[p.Name] {
			down = append(down, p.Name)
		}
	}
	if len(down) == 0 {
		return m.status, "not checked yet"
	}
	return m.status, "unreachable: " + strings.Join(down, ", ")
}

// Check implements grpc.health.v1.Health/Check.
func (m *Monitor) Check(
	_ context.Context, req *connect.Request[healthv1.HealthCheckRequest],
) (*connect.Response[healthv1.HealthCheckResponse], error) {
	if !m.services[req.Msg.GetService()] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %q", req.Msg.GetService()))
	}
	status, _ := m.current()
	return connect.NewResponse(&healthv1.HealthCheckResponse{Status: status}), nil
}

// List implements grpc.health.v1.Health/List: the status of every service
// the server reports on, the server itself under the empty name.
func (m *Monitor) List(
	_ context.Context, _ *connect.Request[healthv1.HealthListRequest],
) (*connect.Response[healthv1.HealthListResponse], error) {
	status, _ := m.current()
	res := &healthv1.HealthListResponse{Statuses: make(map[string]*healthv1.HealthCheckResponse, len(m.services))}
	for s := range m.services {
		res.Statuses[s] = &healthv1.HealthCheckResponse{Status: status}
	}
	return connect.NewResponse(res), nil
}

// Watch implements grpc.health.v1.Health/Watch: it sends the current status
// and then every change until the client goes away or the server drains.
// As the protocol asks, an unknown service is reported as SERVICE_UNKNOWN
// rather than as an error.
func (m *Monitor) Watch(
	ctx context.Context,
	req *connect.Request[healthv1.HealthCheckRequest],
	stream *connect.ServerStream[healthv1.HealthCheckResponse],
) error {
	if !m.services[req.Msg.GetService()] {
		if err := stream.Send(&healthv1.HealthCheckResponse{Status: healthv1.HealthCheckResponse_SERVICE_UNKNOWN}); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
	last := Status(-1)
	for {
		status, changed := m.current()
		if status != last {
			if err := stream.Send(&healthv1.HealthCheckResponse{Status: status}); err != nil {
				return err
			}
			last = status
		}
		select {
		case <-ctx.Done():
			// A shutdown turns the status NOT_SERVING just before it ends
			// the streams; let the watcher see that last change.
			if status, _ := m.current(); status != last {
				_ = stream.Send(&healthv1.HealthCheckResponse{Status: status})
			}
			return nil
		case <-changed:
		}
	}
}
