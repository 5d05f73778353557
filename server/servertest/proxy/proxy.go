// Package proxy is a TCP proxy in front of a real store, for tests that
// cut the store off or make it go dark. It imports nothing of the server,
// so that the tests inside any of its packages can use it.
package proxy

import (
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of a real store that a test can cut and
// restore, to see how the server behaves while the store is unreachable.
type Proxy struct {
	target string
	ln     net.Listener

	mu     sync.Mutex
	broken bool
	conns  map[net.Conn]struct{}
	// dark are the connections Darken left open carrying nothing.
	dark map[net.Conn]bool
	wg   sync.WaitGroup
}

// New starts a proxy to the TCP address target on a loopback port; it
// stops when tb's test ends.
func New(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("proxy: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[net.Conn]struct{}), dark: make(map[net.Conn]bool)}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// Addr returns the proxy's address, to use in place of the target's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Break closes every open connection and refuses new ones until Restore.
func (p *Proxy) Break() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.broken = true
	for c := range p.conns {
		c.Close()
	}
}

// Darken makes the connections open now carry nothing more, either way,
// without closing them, as a link that went dark: what either side
// writes is taken and dropped, and nothing comes back. Connections made
// after it carry as usual.
func (p *Proxy) Darken() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.dark[c] = true
	}
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.broken = false
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		p.mu.Lock()
		if p.broken {
			p.mu.Unlock()
			client.Close()
			continue
		}
		p.mu.Unlock()
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.broken {
			p.mu.Unlock()
			client.Close()
			server.Close()
			continue
		}
		p.conns[client] = struct{}{}
		p.conns[server] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	// An error here means one side went away; closing both ends is all
	// there is to do about it.
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.isDark(src) {
			if _, err := dst.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	delete(p.dark, dst)
	delete(p.dark, src)
	p.mu.Unlock()
}

func (p *Proxy) isDark(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dark[c]
}

func (p *Proxy) close() {
	p.ln.Close()
	p.Break()
	p.wg.Wait()
}
