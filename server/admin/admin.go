// Package admin serves what an operator, not a client, asks a running
// server for, on a listener of its own (-admin-addr) that is never the
// public one: CPU, heap, goroutine, block and mutex profiles and execution
// traces (net/http/pprof, under /debug/pprof/) and the runtime's memory
// statistics as JSON (expvar, at /debug/vars). Nothing here needs a
// caller's identity, so the listener belongs on a loopback or private
// address.
package admin

import (
	"expvar"
	"net/http"
	"net/http/pprof"
)

// Handler returns the admin listener's handler.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/debug/vars", expvar.Handler())
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("Parley admin: /debug/pprof/ (profiles), /debug/vars (memory statistics)\n"))
	})
	return mux
}
