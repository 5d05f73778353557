package rpcerr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// TestFrom_Deadlines: a store's own timeout (a dial that timed out, the
// MongoDB driver giving up on server selection) is UNAVAILABLE, logged;
// the request's own deadline or cancellation keeps its code. None of them
// tells the client the stores' addresses.
func TestFrom_Deadlines(t *testing.T) {
	_, dialErr := (&net.Dialer{Timeout: time.Nanosecond}).Dial("tcp", "10.255.255.1:6379")
	if dialErr == nil {
		t.Skip("the dial did not time out")
	}
	selection := fmt.Errorf("server selection error: %w, current topology: { Addr: mongo-0.internal:27017 }", context.DeadlineExceeded)
	live := context.Background()
	expired, cancel := context.WithDeadline(live, time.Now().Add(-time.Second))
	defer cancel()
	canceled, cancel2 := context.WithCancel(live)
	cancel2()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want connect.Code
	}{
		{"dial timeout", live, fmt.Errorf("send message: rate: %w", dialErr), connect.CodeUnavailable},
		{"server selection", live, fmt.Errorf("get chat: %w", selection), connect.CodeUnavailable},
		{"canceled while the request goes on", live, fmt.Errorf("find 10.1.2.3:27017: %w", context.Canceled), connect.CodeUnavailable},
		{"request deadline", expired, fmt.Errorf("get chat: %w", selection), connect.CodeDeadlineExceeded},
		{"request canceled", canceled, fmt.Errorf("get chat: %w: 10.1.2.3:27017", context.Canceled), connect.CodeCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logged bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logged, nil))
			err := From(tc.ctx, log, "op", tc.err)
			var cerr *connect.Error
			if !errors.As(err, &cerr) || cerr.Code() != tc.want {
				t.Fatalf("From = %v, want code %v", err, tc.want)
			}
			for _, leak := range []string{"10.", "mongo-0", "6379", "27017"} {
				if strings.Contains(cerr.Message(), leak) {
					t.Errorf("the client is told %q", cerr.Message())
				}
			}
			if tc.want == connect.CodeUnavailable && !strings.Contains(logged.String(), "6379") && !strings.Contains(logged.String(), "mongo-0") &&
				!strings.Contains(logged.String(), "10.1.2.3") {
				t.Errorf("the log lacks the detail: %q", logged.String())
			}
		})
	}
}
