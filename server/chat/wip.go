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

func (s *Service) PinMessage(context.Context, *connect.Request[parleyv1.PinMessageRequest]) (*connect.Response[parleyv1.PinMessageResponse], error) {
	return nil, errWIP
}

func (s *Service) UnpinMessage(context.Context, *connect.Request[parleyv1.UnpinMessageRequest]) (*connect.Response[parleyv1.UnpinMessageResponse], error) {
	return nil, errWIP
}

func (s *Service) ListPinnedMessages(context.Context, *connect.Request[parleyv1.ListPinnedMessagesRequest]) (*connect.Response[parleyv1.ListPinnedMessagesResponse], error) {
	return nil, errWIP
}

func (s *Service) GetMessageReceipts(context.Context, *connect.Request[parleyv1.GetMessageReceiptsRequest]) (*connect.Response[parleyv1.GetMessageReceiptsResponse], error) {
	return nil, errWIP
}
