package server_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parley-chat/parley/server"
	"github.com/parley-chat/parley/server/servertest"
)

// onWorker tells whether the caller runs on a goroutine of the request
// workers' pool.
func onWorker() bool {
	buf := make([]byte, 64<<10)
	return bytes.Contains(buf[:runtime.Stack(buf, false)], []byte("ants/v2.(*goWorker).run"))
}

// workersServer serves h behind withWorkers (a pool of n, "/long/" kept
// on the request's goroutine) over TLS, with HTTP/2 when h2; its error
// log goes to logs.
func workersServer(t *testing.T, n int, h http.HandlerFunc, h2 bool, logs io.Writer) (*httptest.Server, *http.Client) {
	t.Helper()
	pool, err := server.NewWorkers(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Release)
	srv := httptest.NewUnstartedServer(server.WithWorkers(pool, h, "/long/"))
	srv.EnableHTTP2 = h2
	srv.Config.ErrorLog = log.New(logs, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := srv.Client()
	if !h2 {
		c.Transport.(*http.Transport).TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return srv, c
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string, error) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res, string(b), err
}

// Short HTTP/2 requests run on a worker, and answer as they would on
// their own goroutine; HTTP/1.1 requests and long ones stay where they
// came.
func TestWithWorkers_WhereRequestsRun(t *testing.T) {
	h := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-On-Worker", map[bool]string{true: "yes", false: "no"}[onWorker()])
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, r.URL.Path)
	}
	for _, tc := range []struct {
		h2   bool
		path string
		want string
	}{
		{true, "/short", "yes"},
		{true, "/long/stream", "no"},
		{false, "/short", "no"},
	} {
		srv, c := workersServer(t, 4, h, tc.h2, io.Discard)
		res, body, err := get(t, c, srv.URL+tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if res.ProtoMajor != map[bool]int{true: 2, false: 1}[tc.h2] {
			t.Fatalf("%s: served over %s", tc.path, res.Proto)
		}
		if res.StatusCode != http.StatusTeapot || body != tc.path || res.Header.Get("X-On-Worker") != tc.want {
			t.Errorf("HTTP/%d %s: %d %q on a worker: %s; want %d %q, %s",
				res.ProtoMajor, tc.path, res.StatusCode, body, res.Header.Get("X-On-Worker"), http.StatusTeapot, tc.path, tc.want)
		}
	}
}

// With every worker busy, a request runs on its own goroutine rather
// than wait for one.
func TestWithWorkers_Busy(t *testing.T) {
	const n = 2
	release := make(chan struct{})
	var busy sync.WaitGroup
	busy.Add(n)
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			busy.Done()
			<-release
		}
		io.WriteString(w, map[bool]string{true: "worker", false: "own"}[onWorker()])
	}
	srv, c := workersServer(t, n, h, true, io.Discard)
	var held sync.WaitGroup
	for range n {
		held.Go(func() {
			if _, body, err := get(t, c, srv.URL+"/hold"); err != nil || body != "worker" {
				t.Errorf("a held request: %q, %v; want it on a worker", body, err)
			}
		})
	}
	busy.Wait() // every worker holds a request
	_, body, err := get(t, c, srv.URL+"/now")
	close(release)
	held.Wait()
	if err != nil || body != "own" {
		t.Fatalf("a request while every worker is busy: %q, %v; want it served on its own goroutine", body, err)
	}
}

// A handler's panic on a worker goes back to the request's goroutine:
// net/http logs it, with the worker's stack, and the request fails;
// http.ErrAbortHandler aborts the request without a log, as it does
// without workers. The worker serves on.
func TestWithWorkers_Panics(t *testing.T) {
	// net/http resets the stream before it logs the panic, and does not
	// wait for the log when the server closes: the test waits for it.
	logs := &notifyingLog{written: make(chan struct{}, 16)}
	h := func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("handler bug")
		case "/abort":
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "fine")
	}
	srv, c := workersServer(t, 1, h, true, logs)
	for _, path := range []string{"/abort", "/panic"} {
		if _, _, err := get(t, c, srv.URL+path); err == nil {
			t.Errorf("%s: the request succeeded", path)
		}
	}
	if _, body, err := get(t, c, srv.URL+"/fine"); err != nil || body != "fine" {
		t.Fatalf("after the panics: %q, %v", body, err)
	}
	timeout := time.After(30 * time.Second)
	for !strings.Contains(logs.String(), "handler bug") {
		select {
		case <-logs.written:
		case <-timeout:
			t.Fatalf("no log of the handler's panic in 30 s; the log:\n%s", logs.String())
		}
	}
	srv.Close()
	got := logs.String()
	if !strings.Contains(got, "on a request worker") || !strings.Contains(got, "workers_test.go") {
		t.Errorf("the log of a handler's panic lacks the worker's stack:\n%s", got)
	}
	if strings.Count(got, "panic serving") != 1 {
		t.Errorf("want one panic logged (ErrAbortHandler is not), got:\n%s", got)
	}
}

// notifyingLog is a log that signals each write.
type notifyingLog struct {
	servertest.SyncBuffer
	written chan struct{}
}

func (l *notifyingLog) Write(p []byte) (int, error) {
	n, err := l.SyncBuffer.Write(p)
	select {
	case l.written <- struct{}{}:
	default:
	}
	return n, err
}
