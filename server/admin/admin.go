// Package admin serves what an operator, not a client, asks a running
// server for, on a listener of its own (-admin-addr) that is never the
// public one: Prometheus metrics (/metrics), the liveness and readiness
// probes (/livez, /readyz, as on the public listener), CPU, heap,
// goroutine, block and mutex profiles and execution traces
// (net/http/pprof, under /debug/pprof/) and the runtime's memory
// statistics as JSON (at /debug/vars, in expvar's "memstats" form).
// Nothing here needs a caller's identity, so the listener belongs on a
// loopback or private address. The command line is not served (pprof's
// and expvar's "cmdline"): it may hold store URLs with passwords.
package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"runtime"

	"github.com/parley-chat/parley/server/health"
)

// Handler returns the admin listener's handler: metrics serves /metrics,
// and the probes answer from monitor.
func Handler(metrics http.Handler, monitor *health.Monitor) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.Handle(health.LivePath, health.LiveHandler())
	mux.Handle(health.ReadyPath, health.ReadyHandler(monitor))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/vars", memStats)
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("Parley admin: /metrics (Prometheus), /livez and /readyz (probes), /debug/pprof/ (profiles), /debug/vars (memory statistics)\n"))
	})
	return mux
}

// memStats writes runtime.MemStats as expvar would, without expvar's
// command line.
func memStats(w http.ResponseWriter, _ *http.Request) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(map[string]any{"memstats": m})
}
