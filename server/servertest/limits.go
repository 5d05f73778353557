package servertest

import (
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// WantRetry fails the test unless err is a limit's refusal
// (rpcerr.TooMany): RESOURCE_EXHAUSTED with a google.rpc.RetryInfo
// detail. It returns the delay the detail asks for.
func WantRetry(tb testing.TB, err error) time.Duration {
	tb.Helper()
	WantCode(tb, err, connect.CodeResourceExhausted)
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		tb.Fatalf("error %v is not a Connect error", err)
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if derr != nil {
			tb.Fatalf("error detail: %v", derr)
		}
		if ri, ok := v.(*errdetails.RetryInfo); ok {
			if got := ri.GetRetryDelay().AsDuration(); got < time.Second {
				tb.Fatalf("RetryInfo asks for %s, want at least a second", got)
			}
			return ri.GetRetryDelay().AsDuration()
		}
	}
	tb.Fatalf("error %v has no RetryInfo detail", err)
	return 0
}
