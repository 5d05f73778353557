// Package info implements parley.v1.ServerService, which tells clients the
// server's version and the limits their requests must respect.
package info

import (
	"context"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// API is the protobuf package this server implements.
const API = "parley.v1"

type service struct {
	version         string
	maxRequestBytes int64
}

var _ parleyv1connect.ServerServiceHandler = (*service)(nil)

// NewService returns the ServerService handler for a server of the given
// version that accepts request messages of up to maxRequestBytes.
func NewService(version string, maxRequestBytes int64) parleyv1connect.ServerServiceHandler {
	return &service{version: version, maxRequestBytes: maxRequestBytes}
}

// GetServerInfo returns the server's version and limits.
func (s *service) GetServerInfo(
	context.Context, *connect.Request[parleyv1.GetServerInfoRequest],
) (*connect.Response[parleyv1.GetServerInfoResponse], error) {
	return connect.NewResponse(&parleyv1.GetServerInfoResponse{
		Version:         s.version,
		Api:             API,
		MaxRequestBytes: s.maxRequestBytes,
	}), nil
}
