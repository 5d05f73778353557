package servertest

import (
	"testing"

	"github.com/parley-chat/parley/server/servertest/proxy"
)

// Proxy is a TCP proxy in front of a real store that a test can cut,
// darken and restore (see package proxy).
type Proxy = proxy.Proxy

// NewProxy starts a proxy to the TCP address target on a loopback port; it
// stops when tb's test ends.
func NewProxy(tb testing.TB, target string) *Proxy { return proxy.New(tb, target) }
