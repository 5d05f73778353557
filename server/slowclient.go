package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/parley-chat/parley/server/media"
)

// Defaults of the HTTP server's bounds on slow clients.
const (
	// DefaultReadHeaderTimeout bounds reading a request's headers (and,
	// for h2c, the connection preface).
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultRequestBodyTimeout bounds receiving a whole RPC request body,
	// at most DefaultMaxRequestBytes: 4 MiB in 30 s is about 140 kB/s, and
	// the messages clients send are a few kB.
	DefaultRequestBodyTimeout = 30 * time.Second
)

// withBodyDeadline gives every request body outside /media/ a total read
// deadline of timeout from the moment the handler starts, so that a client
// trickling a body (a Register at a byte a second) holds its connection,
// goroutine and buffers for at most that long. http.Server.ReadTimeout
// cannot do this: on HTTP/1.1 it also bounds the rest of the connection's
// life (cutting long streams), and it is one value for every path, while
// uploads and downloads under /media/ have rate rules of their own.
//
// The deadline is set with http.ResponseController: on HTTP/1.1 it is the
// connection's read deadline, on HTTP/2 (TLS or h2c) the stream's alone,
// leaving the connection's other streams alone. Only reading is bounded:
// what follows, such as the response of a LiveService.Subscribe stream, is
// not. Once the body has been read to its end the deadline is cleared
// (Go's HTTP/1.1 server also clears it itself then, before it reads the
// connection in the background to notice a client going away; on HTTP/2
// this stops the stream's timer).
func withBodyDeadline(timeout time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || strings.HasPrefix(r.URL.Path, media.Path) {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			// Only a writer that hides the connection gets here; the
			// server's own always supports deadlines.
			next.ServeHTTP(w, r)
			return
		}
		r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, timeout: timeout}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody clears the read deadline at the body's end and turns its
// expiry into DEADLINE_EXCEEDED, which Connect passes on as it is.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	ended   bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil || b.ended:
	case errors.Is(err, io.EOF):
		b.ended = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The deadline stays: whatever else is read from this body (or,
		// on HTTP/1.1, discarded from the connection) fails at once.
		b.ended = true
		err = connect.NewError(connect.CodeDeadlineExceeded,
			fmt.Errorf("request body not received within %s", b.timeout))
	}
	return n, err
}
