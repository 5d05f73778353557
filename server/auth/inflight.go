package auth

import "sync"

// DefaultUnauthenticatedPerAddress is how many requests without a caller
// one client address may have in flight on one instance at once. Honest
// clients have one or two (a sign-in, a server-info call, a health
// check); 64 leaves room for many users behind one NAT signing in at the
// same moment, while an address that opens a thousand connections to
// trickle Register bodies holds 64 of them, each for at most the request
// body deadline.
const DefaultUnauthenticatedPerAddress = 64

// inFlight counts the requests in flight per client address and refuses
// those beyond max. It lives in this instance's memory: what it protects
// is this instance's connections, goroutines and buffers, so a count
// shared across instances would bound nothing more, and it costs no store
// round trip before a request is even authenticated.
type inFlight struct {
	max int

	mu sync.Mutex
	n  map[string]int
}

func newInFlight(max int) *inFlight {
	return &inFlight{max: max, n: make(map[string]int)}
}

// acquire counts one more request from addr, or reports false (counting
// nothing) when addr already has max in flight.
func (f *inFlight) acquire(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[addr] >= f.max {
		return false
	}
	f.n[addr]++
	return true
}

// release ends a request that acquire counted. An address with none left
// is forgotten, so the map holds only addresses with requests in flight.
func (f *inFlight) release(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[addr] <= 1 {
		delete(f.n, addr)
		return
	}
	f.n[addr]--
}
