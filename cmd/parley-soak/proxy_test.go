package main

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echo serves line echoes on a loopback port.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, line string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxy_CutAndMend(t *testing.T) {
	p, err := newProxy(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "one"); err != nil || got != "one\n" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	p.setCut(true)
	// The connection it carried is closed...
	if got, err := roundTrip(c, r, "two"); err == nil {
		t.Fatalf("a cut connection still answered %q", got)
	}
	// ...and a new one is refused.
	if c2, err := net.Dial("tcp", p.addr); err == nil {
		c2.Close()
		t.Fatal("a connection was accepted while cut")
	}

	if err := p.setCut(false); err != nil {
		t.Fatal(err)
	}
	c3, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if got, err := roundTrip(c3, bufio.NewReader(c3), "four"); err != nil || got != "four\n" {
		t.Fatalf("after mending: %q, %v", got, err)
	}
}

func TestParseFaults(t *testing.T) {
	if got, err := parseFaults("all"); err != nil || len(got) != len(faultKinds) {
		t.Fatalf("all: %v, %v", got, err)
	}
	if got, err := parseFaults("instance-kill,redis-cut"); err != nil || len(got) != 2 || got[1] != "redis-cut" {
		t.Fatalf("two: %v, %v", got, err)
	}
	if _, err := parseFaults("instance-kill,meteor"); err == nil {
		t.Fatal("an unknown fault was taken")
	}
}
