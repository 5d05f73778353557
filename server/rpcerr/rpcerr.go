// Package rpcerr turns the errors of Parley's stores into Connect errors in
// one place. Errors that mean something to the client (not found, already
// exists, store unavailable) get their precise code; anything else is logged
// with its detail and returned as a bare "internal error".
package rpcerr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/redisconn"
)

// Internal is what clients see of an internal failure.
var Internal = errors.New("internal error")

// From maps err, from a store or another layer, to a Connect error. A
// *connect.Error passes through unchanged. what names the operation for the
// log, for example "create user".
func From(ctx context.Context, log *slog.Logger, what string, err error) error {
	if err == nil {
		return nil
	}
	var cerr *connect.Error
	switch {
	case errors.As(err, &cerr):
		return cerr
	case errors.Is(err, doclock.ErrBusy):
		log.WarnContext(ctx, what, "err", err)
		return connect.NewError(connect.CodeAborted, errors.New("another change of the same data is in progress; retry"))
	// The request's own end; a deadline of the store's own (a dial
	// timeout, the MongoDB driver's server selection) is the store
	// being unavailable, below. Neither says more to the client: the
	// wrapped errors name the stores' addresses.
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return connect.NewError(connect.CodeCanceled, errors.New("the request was canceled"))
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		log.WarnContext(ctx, what+": the request's deadline passed", "err", err)
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the request's deadline passed"))
	case ent.IsNotFound(err), errors.Is(err, redis.Nil):
		return connect.NewError(connect.CodeNotFound, errors.New("not found"))
	case ent.IsValidationError(err):
		// The request rules should have caught this first; say so in the
		// log, but the client still sent a bad value.
		log.WarnContext(ctx, what+": value passed the request rules but not the schema", "err", err)
		return connect.NewError(connect.CodeInvalidArgument, errors.New("invalid value"))
	case isUnavailable(err):
		log.ErrorContext(ctx, what, "err", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("a store is unavailable; retry later"))
	default:
		log.ErrorContext(ctx, what, "err", err)
		return connect.NewError(connect.CodeInternal, Internal)
	}
}

// isUnavailable reports whether err means a store could not be reached, so
// that retrying later may succeed.
func isUnavailable(err error) bool {
	var netErr net.Error
	var opErr *net.OpError
	// A context error while the request goes on: a deadline of the
	// store's own, or work cut short by something else than the request
	// (From has handled the request's own end).
	return errors.As(err, &opErr) || (errors.As(err, &netErr) && netErr.Timeout()) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) ||
		errors.Is(err, redisconn.ErrNotReplicated) || redisFailingOver(err)
}

// redisFailingOver reports whether Redis refused a command because a node
// is down, loading, or handing its slots over: a Redis Cluster failover,
// which a retry a few seconds later gets past.
func redisFailingOver(err error) bool {
	for _, prefix := range []string{"CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN", "READONLY", "MOVED", "ASK"} {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
	}
	return false
}

// HTTPStatus is the HTTP status that plain HTTP endpoints (not RPCs)
// answer with for a code.
func HTTPStatus(c connect.Code) int {
	switch c {
	case connect.CodeInvalidArgument:
		return http.StatusBadRequest
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeFailedPrecondition, connect.CodeAlreadyExists, connect.CodeAborted:
		return http.StatusConflict
	case connect.CodeResourceExhausted:
		return http.StatusRequestEntityTooLarge
	case connect.CodeDeadlineExceeded:
		return http.StatusRequestTimeout
	case connect.CodeCanceled:
		return 499 // client closed request, as nginx logs it
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// RateLimited counts the refusals of TooMany by the limit that refused:
// parley_rate_limited_total{limit="send"}. It is process-wide (each
// server's metrics registry collects it), as a Prometheus client's
// counters usually are.
var RateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "parley_rate_limited_total",
	Help: "Requests refused by a rate or concurrency limit, by the limit.",
}, []string{"limit"})

// TooMany is RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail and a
// Retry-After header, both saying when to try again (at least a second
// from now). Every limit a client can run into answers with it, so clients
// can back off the same way everywhere. limit names the limit in the
// metrics (RateLimited), such as "send" or "login_account".
func TooMany(limit, msg string, retry time.Duration) *connect.Error {
	RateLimited.WithLabelValues(limit).Inc()
	retry = max(retry.Round(time.Second), time.Second)
	err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s (retry after %s)", msg, retry))
	if d, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); derr == nil {
		err.AddDetail(d)
	}
	err.Meta().Set("Retry-After", strconv.Itoa(int(retry.Seconds())))
	return err
}
