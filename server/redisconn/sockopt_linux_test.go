//go:build linux

package redisconn

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// The connections to Redis bound how long sent data may go unacknowledged
// (TCP_USER_TIMEOUT, see userTimeout), with or without address
// translations.
func TestDialer_UserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, m := range []natMap{nil, {"10.0.0.1:6379": ln.Addr().String()}} {
		addr := ln.Addr().String()
		if m != nil {
			addr = "10.0.0.1:6379"
		}
		conn, err := m.dialer(0, nil)(context.Background(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := conn.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var got int
		var gerr error
		if err := raw.Control(func(fd uintptr) {
			got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		}); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		conn.Close()
		if want := int(userTimeout.Milliseconds()); got != want {
			t.Errorf("translations %v: TCP_USER_TIMEOUT = %d ms, want %d", m, got, want)
		}
	}
	// A Unix socket has no such option, and dials all the same.
	path := t.TempDir() + "/redis.sock"
	uln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	conn, err := natMap(nil).dialer(0, nil)(context.Background(), "unix", path)
	if err != nil {
		t.Fatalf("dial a Unix socket: %v", err)
	}
	conn.Close()
}
