package chat

import (
	"cmp"
	"context"
	"slices"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// GetMessageReceipts tells which members have read a message, which have
// received it without reading it, and which have not received it yet,
// each list by user id. "The chat's other members" are those other than
// the message's sender, who has read its own message by sending it: the
// same members whose positions make the message's status. So a sender
// asking about its message hears of everyone else, and a member asking
// about another's message finds itself among them. While a private chat
// is a request, every list is empty: its starter learns nothing of the
// other member's activity, as with message statuses (see positions).
// Deleted messages have receipts too.
func (s *Service) GetMessageReceipts(
	ctx context.Context, req *connect.Request[parleyv1.GetMessageReceiptsRequest],
) (*connect.Response[parleyv1.GetMessageReceiptsResponse], error) {
	c, _, msg, err := s.message(ctx, req.Msg.GetChatId(), req.Msg.GetMessageId())
	if err != nil {
		return nil, err
	}
	res := &parleyv1.GetMessageReceiptsResponse{}
	if c.Request != nil {
		return connect.NewResponse(res), nil
	}
	members, err := s.store.chatMembers(ctx, c)
	if err != nil {
		return nil, s.internal(ctx, "get message receipts", err)
	}
	slices.SortFunc(members, func(a, b member) int { return cmp.Compare(a.UserID, b.UserID) })
	for _, m := range members {
		uid := int32(m.UserID)
		switch {
		case m.UserID == msg.SenderID:
		case m.ReadSeq >= msg.Seq:
			res.ReadUserIds = append(res.ReadUserIds, uid)
		case m.DeliveredSeq >= msg.Seq:
			res.DeliveredUserIds = append(res.DeliveredUserIds, uid)
		default:
			res.PendingUserIds = append(res.PendingUserIds, uid)
		}
	}
	return connect.NewResponse(res), nil
}
