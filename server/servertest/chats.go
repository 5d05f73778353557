package servertest

import (
	"context"
	"testing"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// PrivateChat returns the private chat between the caller (whose access
// token is token) and peerID, creating it if needed.
func PrivateChat(tb testing.TB, c parleyv1connect.ChatServiceClient, token string, peerID int32) *parleyv1.Chat {
	tb.Helper()
	res, err := c.CreatePrivateChat(context.Background(), WithToken(&parleyv1.CreatePrivateChatRequest{PeerId: peerID}, token))
	if err != nil {
		tb.Fatalf("CreatePrivateChat: %v", err)
	}
	return res.Msg.GetChat()
}

// AcceptRequest accepts the private chat request chatID as the user whose
// access token is token, so that the chat behaves as one between users
// who chatted before (presence, ticks).
func AcceptRequest(tb testing.TB, c parleyv1connect.ChatServiceClient, token, chatID string) *parleyv1.Chat {
	tb.Helper()
	res, err := c.AcceptChatRequest(context.Background(), WithToken(&parleyv1.AcceptChatRequestRequest{ChatId: chatID}, token))
	if err != nil {
		tb.Fatalf("AcceptChatRequest: %v", err)
	}
	return res.Msg.GetChat()
}

// GroupChat creates a group named name of the caller, its admin, and the
// members.
func GroupChat(tb testing.TB, c parleyv1connect.ChatServiceClient, token, name string, memberIDs ...int32) *parleyv1.Chat {
	tb.Helper()
	res, err := c.CreateGroupChat(context.Background(), WithToken(&parleyv1.CreateGroupChatRequest{Name: name, MemberIds: memberIDs}, token))
	if err != nil {
		tb.Fatalf("CreateGroupChat: %v", err)
	}
	return res.Msg.GetChat()
}

// Send sends a text message to the chat with a client message id no other
// send uses, and returns the message.
func Send(tb testing.TB, c parleyv1connect.MessageServiceClient, token, chatID, text string) *parleyv1.Message {
	tb.Helper()
	res, err := c.SendMessage(context.Background(), WithToken(&parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: UniqueName("c"), Text: text,
	}, token))
	if err != nil {
		tb.Fatalf("SendMessage: %v", err)
	}
	return res.Msg.GetMessage()
}

// ListMessagesAfter pages through the chat's messages after the seq after,
// 100 at a time, and returns all of them. It returns the first error, so
// that it can run outside the test's goroutine.
func ListMessagesAfter(c parleyv1connect.MessageServiceClient, token, chatID string, after int64) ([]*parleyv1.Message, error) {
	var out []*parleyv1.Message
	for {
		res, err := c.ListMessages(context.Background(), WithToken(&parleyv1.ListMessagesRequest{
			ChatId: chatID, Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: after}, Limit: 100,
		}, token))
		if err != nil {
			return nil, err
		}
		out = append(out, res.Msg.GetMessages()...)
		if !res.Msg.GetHasMore() || res.Msg.GetPageEndSeq() <= after {
			return out, nil
		}
		after = res.Msg.GetPageEndSeq()
	}
}
