package chat

// Temporary, on the f17 branch only: the methods not written yet. Each
// feature deletes its own from here; this file must be gone before the
// branch is merged.

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

var errWIP = connect.NewError(connect.CodeUnimplemented, errors.New("not written yet"))

func (s *Service) AddReaction(context.Context, *connect.Request[parleyv1.AddReactionRequest]) (*connect.Response[parleyv1.AddReactionResponse], error) {
	return nil, errWIP
}

func (s *Service) RemoveReaction(context.Context, *connect.Request[parleyv1.RemoveReactionRequest]) (*connect.Response[parleyv1.RemoveReactionResponse], error) {
	return nil, errWIP
}

func (s *Service) ListReactions(context.Context, *connect.Request[parleyv1.ListReactionsRequest]) (*connect.Response[parleyv1.ListReactionsResponse], error) {
	return nil, errWIP
}
