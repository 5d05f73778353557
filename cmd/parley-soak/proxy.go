package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// proxy forwards TCP connections to one address, and can cut them: while
// cut, it closes every connection it carries and stops listening, so
// that new connections are refused (as by a host that is down, or a
// firewall that rejects), until it is mended and listens again on the
// same port.
type proxy struct {
	addr string // where it listens

	mu     sync.Mutex
	ln     net.Listener // nil while cut
	target string
	conns  map[net.Conn]struct{}
	closed bool
}

// newProxy listens on a free loopback port and forwards to target.
func newProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{addr: ln.Addr().String(), ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve(ln)
	return p, nil
}

// retarget forwards the connections that come from now on to target.
func (p *proxy) retarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

func (p *proxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	if !p.track(c) {
		c.Close()
		return
	}
	defer p.untrack(c)
	t, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(t) {
		c.Close()
		t.Close()
		return
	}
	defer p.untrack(t)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Either side's end ends both, as a proxy does.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(t, c)
	go pipe(c, t)
	<-done
	<-done
}

// track adds a connection; false while cut (the connection is dropped).
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// setCut cuts the proxy (closing what it carries and its listener) or
// mends it (listening again on its port).
func (p *proxy) setCut(cut bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cut {
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
		for c := range p.conns {
			c.Close()
		}
		return nil
	}
	if p.ln != nil || p.closed {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return err
	}
	p.ln = ln
	go p.serve(ln)
	return nil
}

func (p *proxy) close() {
	p.setCut(true)
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}
