package server

import (
	"context"

	"connectrpc.com/connect"
)

// drainInterceptor ends streaming RPCs when the server starts shutting down.
// http.Server.Shutdown waits for connections to go idle, which a long stream
// never does; cancelling the stream's context lets its handler return
// normally, so clients see a clean end of stream and reconnect elsewhere.
// Unary calls are left to finish.
type drainInterceptor struct {
	drain context.Context
}

func (d drainInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return next
}

func (d drainInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (d drainInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(d.drain, cancel)
		defer stop()
		return next(ctx, conn)
	}
}
