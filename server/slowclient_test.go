package server_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/reqlog"
	"github.com/parley-chat/parley/server/servertest"
)

// hostOf returns the host:port of a test server.
func hostOf(t *testing.T, srv *servertest.Server) string {
	t.Helper()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// dial opens a plain TCP connection to the server, closed when the test
// ends, with a deadline that keeps a broken test from hanging.
func dial(t *testing.T, srv *servertest.Server) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", hostOf(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// trickle writes one byte of body every 20 ms until stop is closed or a
// write fails: a client that keeps sending, only too slowly, so that an
// idle timeout alone would never cut it.
func trickle(w io.Writer, stop <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			if _, err := w.Write([]byte(" ")); err != nil {
				return
			}
		}
	}
}

// TestServer_RequestBodyTimeout checks that an RPC request body trickled
// in over more than -request-body-timeout is cut at the deadline, over
// HTTP/1.1 and h2c, while a normal request and a Subscribe stream that
// lasts many times the deadline are not.
func TestServer_RequestBodyTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.RequestBodyTimeout = timeout
		c.Live.Heartbeat = 50 * time.Millisecond
	}))

	t.Run("http1", func(t *testing.T) {
		c := dial(t, srv)
		fmt.Fprintf(c, "POST /parley.v1.AuthService/Register HTTP/1.1\r\nHost: %s\r\n"+
			"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", hostOf(t, srv))
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		go trickle(c, stop)
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to a trickled body: %v", err)
		}
		body, _ := io.ReadAll(res.Body)
		elapsed := time.Since(start)
		if !strings.Contains(string(body), `"code":"deadline_exceeded"`) {
			t.Errorf("trickled body: status %d, body %s; want deadline_exceeded", res.StatusCode, body)
		}
		if elapsed < timeout || elapsed > timeout+5*time.Second {
			t.Errorf("trickled body cut after %s, want about %s", elapsed, timeout)
		}
	})

	t.Run("h2c", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/parley.v1.AuthService/Register", pr)
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			// A message prefix announcing 1,000 bytes, then a trickle.
			if _, err := pw.Write([]byte{0, 0, 0, 0x03, 0xe8}); err == nil {
				trickle(pw, stop)
			}
		}()
		start := time.Now()
		res, err := servertest.Protocols[1].HTTPClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		elapsed := time.Since(start)
		status := res.Header.Get("Grpc-Status") + res.Trailer.Get("Grpc-Status")
		if want := fmt.Sprint(int(connect.CodeDeadlineExceeded)); status != want {
			t.Errorf("trickled body: grpc-status %q, want %s", status, want)
		}
		if elapsed < timeout || elapsed > timeout+5*time.Second {
			t.Errorf("trickled body cut after %s, want about %s", elapsed, timeout)
		}
	})

	for _, p := range servertest.Protocols {
		t.Run("normal/"+p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			me := servertest.Register(t, c.Auth, servertest.UniqueName("bodytimeout"))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := c.Live.Subscribe(ctx, servertest.WithToken(&parleyv1.SubscribeRequest{}, me.Token))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// Heartbeats keep coming long after the request body's
			// deadline would have passed.
			start := time.Now()
			for time.Since(start) < 5*timeout {
				if !s.Receive() {
					t.Fatalf("stream ended after %s: %v", time.Since(start), s.Err())
				}
			}
		})
	}
}

// TestServer_ReadHeaderTimeout checks that a client sending its headers
// (or its h2c preface) too slowly is cut after -read-header-timeout, and
// that the default holds at 10 s.
func TestServer_ReadHeaderTimeout(t *testing.T) {
	if got := server.NewHTTPServer(":0", http.NotFoundHandler(), nil, 0).ReadHeaderTimeout; got != 10*time.Second {
		t.Errorf("default ReadHeaderTimeout = %s, want 10s", got)
	}
	const timeout = 300 * time.Millisecond
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.ReadHeaderTimeout = timeout }))
	for name, partial := range map[string]string{
		"http1": "GET /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\nX-Slow: ",
		"h2c":   "PRI * HTTP/2.0\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			// The server's clock starts when it has the connection, which
			// may be before dial returns here.
			start := time.Now()
			c := dial(t, srv)
			io.WriteString(c, partial)
			stop := make(chan struct{})
			defer close(stop)
			go trickle(c, stop)
			// Until the server closes the connection: a clean end, or a
			// reset when bytes it never read were still arriving.
			_, err := io.ReadAll(c)
			elapsed := time.Since(start)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v (the server did not cut the connection)", err)
			}
			if elapsed < timeout || elapsed > timeout+5*time.Second {
				t.Errorf("slow headers cut after %s, want about %s", elapsed, timeout)
			}
		})
	}
}

// heldRequest is a request in flight that the test ends when it wants.
type heldRequest struct {
	c net.Conn
	r *bufio.Reader
}

// holdRequest starts a Register without a caller from the client address
// ip (in X-Real-IP) and returns once the server is handling it: it asks
// for 100 Continue, which the server sends when the handler first reads
// the body. The body does not come until finish.
func holdRequest(t *testing.T, srv *servertest.Server, ip string) heldRequest {
	t.Helper()
	c := dial(t, srv)
	fmt.Fprintf(c, "POST /parley.v1.AuthService/Register HTTP/1.1\r\nHost: %s\r\nX-Real-IP: %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n", hostOf(t, srv), ip)
	h := heldRequest{c: c, r: bufio.NewReader(c)}
	res, err := http.ReadResponse(h.r, nil)
	if err != nil || res.StatusCode != http.StatusContinue {
		t.Fatalf("held request: %v, %v; want 100 Continue", res, err)
	}
	return h
}

// finish sends the held request's body (an empty Register, which the
// server refuses as invalid) and reads the answer, which the server
// writes only after its handlers have returned.
func (h heldRequest) finish(t *testing.T) {
	t.Helper()
	io.WriteString(h.c, "{}"+strings.Repeat(" ", 98))
	res, err := http.ReadResponse(h.r, nil)
	if err != nil {
		t.Fatalf("held request: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
}

// withIP sets the client address header a trusted proxy would set.
func withIP[T any](msg *T, ip string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set("X-Real-IP", ip)
	return req
}

// TestServer_UnauthenticatedPerAddress checks that one client address (as
// the proxy's header gives it) gets at most -unauthenticated-per-address
// requests without a caller in flight: the next is refused at once with
// RESOURCE_EXHAUSTED in its own protocol and creates nothing, while
// another address behind the same proxy still gets through.
func TestServer_UnauthenticatedPerAddress(t *testing.T) {
	const limit = 3
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.UnauthenticatedPerAddress = limit
		c.ClientIPHeader = "X-Real-IP"
	}))
	const busy, other = "203.0.113.7", "203.0.113.8"
	var held []heldRequest
	for range limit {
		held = append(held, holdRequest(t, srv, busy))
	}
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.NewClients(srv, p)
			name := servertest.UniqueName("unauth")
			reg := &parleyv1.RegisterRequest{Username: name, Email: name + "@example.com", Password: servertest.Password}
			_, err := c.Auth.Register(context.Background(), withIP(reg, busy))
			servertest.WantCode(t, err, connect.CodeResourceExhausted)
			var cerr *connect.Error
			if errors.As(err, &cerr) && len(cerr.Details()) == 0 {
				t.Errorf("refusal has no RetryInfo: %v", err)
			}
			// The refused Register created nothing.
			_, err = c.Auth.Login(context.Background(), withIP(&parleyv1.LoginRequest{Login: name, Password: servertest.Password}, other))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)

			res, err := c.Auth.Register(context.Background(), withIP(reg, other))
			if err != nil {
				t.Fatalf("another address: Register: %v", err)
			}
			// A signed-in caller is not counted against its address.
			_, err = c.User.GetMe(context.Background(), func() *connect.Request[parleyv1.GetMeRequest] {
				r := servertest.WithToken(&parleyv1.GetMeRequest{}, res.Msg.GetTokens().GetAccessToken())
				r.Header().Set("X-Real-IP", busy)
				return r
			}())
			if err != nil {
				t.Fatalf("signed in, from the busy address: GetMe: %v", err)
			}
		})
	}

	// Once its requests end, the address may make new ones.
	for _, h := range held {
		h.finish(t)
	}
	c := servertest.NewClients(srv, servertest.Protocols[0])
	name := servertest.UniqueName("unauth")
	if _, err := c.Auth.Register(context.Background(), withIP(&parleyv1.RegisterRequest{
		Username: name, Email: name + "@example.com", Password: servertest.Password,
	}, busy)); err != nil {
		t.Fatalf("after its requests ended, the address: Register: %v", err)
	}
}

// rapidReset opens h2c connections to the server and, on each, sends
// HEADERS for path followed at once by RST_STREAM, perConn times, until it
// has reset n streams in all; a connection the server closes (Go's own
// mitigation answers GOAWAY when too many reset streams queue up) is
// replaced early. It returns how many connections it used.
func rapidReset(t *testing.T, srv *servertest.Server, path string, n, perConn int) (conns int) {
	t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: hostOf(t, srv)}, {Name: ":path", Value: path},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		enc.WriteField(f)
	}
	for sent := 0; sent < n; {
		conns++
		c := dial(t, srv)
		bw := bufio.NewWriterSize(c, 64<<10)
		var mu sync.Mutex // the reader acks the server's SETTINGS
		fr := http2.NewFramer(bw, c)
		io.WriteString(bw, http2.ClientPreface)
		fr.WriteSettings()
		bw.Flush()
		go func() {
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
					mu.Lock()
					fr.WriteSettingsAck()
					bw.Flush()
					mu.Unlock()
				}
			}
		}()
		var err error
		for id := uint32(1); sent < n && err == nil && id < uint32(2*perConn); id += 2 {
			mu.Lock()
			err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true})
			if err == nil {
				err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
			}
			if err == nil && id%64 == 63 {
				err = bw.Flush()
			}
			mu.Unlock()
			if err == nil {
				sent++
			}
		}
		if err == nil {
			mu.Lock()
			err = bw.Flush()
			mu.Unlock()
		}
		c.Close()
	}
	return conns
}

// TestServer_RapidReset checks that an HTTP/2 rapid-reset burst, without
// signing in, writes at most one log line per connection (and at most
// reqlog.AbusePerSecond a second), not one per stream, and that the
// server keeps serving others.
func TestServer_RapidReset(t *testing.T) {
	const resets = 50000
	for _, tc := range []struct {
		name, path string
		perConn    int
	}{
		// Public: counted per address, then decoded.
		{"Register", "/parley.v1.AuthService/Register", resets},
		// Refused before any handler: no token.
		{"ListChats", "/parley.v1.ChatService/ListChats", resets},
		// Many connections, a few resets each: the global cap holds.
		{"connections", "/parley.v1.ChatService/ListChats", 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, logs := startLogged(t, nil)
			n := resets
			if tc.perConn < resets {
				n = 200 * tc.perConn
			}
			start := time.Now()
			conns := rapidReset(t, srv, tc.path, n, tc.perConn)
			burst := time.Since(start)

			c := servertest.NewClients(srv, servertest.Protocols[1])
			if _, err := c.Server.GetServerInfo(context.Background(), connect.NewRequest(&parleyv1.GetServerInfoRequest{})); err != nil {
				t.Fatalf("after the burst: GetServerInfo: %v", err)
			}
			if err := srv.Stop(); err != nil { // every handler has logged
				t.Fatal(err)
			}
			out := logs.String()
			lines := strings.Count(out, "procedure="+tc.path)
			t.Logf("%d resets on %d connections in %s: %d log lines for %s, %d bytes of log in all",
				n, conns, burst.Round(time.Millisecond), lines, tc.path, len(out))
			if lines > conns {
				t.Errorf("%d log lines for %d connections; want at most one per connection", lines, conns)
			}
			if limit := reqlog.AbusePerSecond * int(burst/time.Second+2); lines > limit {
				t.Errorf("%d log lines in %s; want at most %d", lines, burst, limit)
			}
		})
	}
}
