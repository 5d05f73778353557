package chat_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// TestMessageService_SendMessage_RateLimit: a user's sends share one
// budget over all instances; the send past the burst is refused with
// RetryInfo and changes nothing (no message, no seq); a retry of a
// message already stored still gets its answer; other users are not held
// back.
func TestMessageService_SendMessage_RateLimit(t *testing.T) {
	// Nothing refills while the test runs: the burst is all there is.
	tight := servertest.WithConfig(func(c *app.Config) {
		c.Sends = chat.SendLimit{Rate: 1, Period: time.Hour, Burst: 60}
	})
	srv, other := servertest.New(t, tight), servertest.New(t, tight)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob := newUser(t, srv, p), newUser(t, srv, p)
			chatID := servertest.PrivateChat(t, alice.chats, alice.token, bob.id).GetId()
			otherMsgs := servertest.Client(other, p, parleyv1connect.NewMessageServiceClient)
			sendAs := func(c parleyv1connect.MessageServiceClient, id string) (*parleyv1.Message, error) {
				res, err := c.SendMessage(ctx, req(alice, &parleyv1.SendMessageRequest{ChatId: chatID, ClientMessageId: id, Text: id}))
				if err != nil {
					return nil, err
				}
				return res.Msg.GetMessage(), nil
			}
			// Half the burst on each instance.
			var last *parleyv1.Message
			for i := range 60 {
				c := alice.msgs
				if i%2 == 1 {
					c = otherMsgs
				}
				m, err := sendAs(c, fmt.Sprintf("m%d", i))
				if err != nil {
					t.Fatalf("send %d of the burst: %v", i+1, err)
				}
				last = m
			}
			for _, c := range []parleyv1connect.MessageServiceClient{alice.msgs, otherMsgs} {
				_, err := sendAs(c, "m60")
				servertest.WantRetry(t, err)
			}
			if got := listAll(t, alice, chatID); len(got) != 60 {
				t.Fatalf("after the refusals the chat has %d messages, want 60", len(got))
			}
			if got := getChat(t, bob, chatID); got.GetUnreadCount() != 60 || got.GetLastMessage().GetSeq() != 60 {
				t.Errorf("after the refusals bob sees %d unread, last seq %d; want 60 and 60", got.GetUnreadCount(), got.GetLastMessage().GetSeq())
			}
			// A retry of a stored send is answered, not refused.
			again, err := sendAs(otherMsgs, "m59")
			if err != nil {
				t.Fatalf("retry of a stored send: %v", err)
			}
			if again.GetId() != last.GetId() || again.GetSeq() != 60 {
				t.Errorf("retry answered %s seq %d, want the stored %s seq 60", again.GetId(), again.GetSeq(), last.GetId())
			}
			// The refused sends took no seq: once the budget is reset (by
			// hand, in redis_rate's key), the next message is 61.
			key := fmt.Sprintf("rate:%ssend:%d", servertest.SharedStores(t).RedisPrefix, alice.id)
			if err := srv.App.Redis().Del(ctx, key).Err(); err != nil {
				t.Fatal(err)
			}
			next, err := sendAs(alice.msgs, "m60")
			if err != nil {
				t.Fatalf("send on the generous instance: %v", err)
			}
			if next.GetSeq() != 61 {
				t.Errorf("next message has seq %d, want 61", next.GetSeq())
			}
			// Bob's budget is his own.
			if _, err := bob.msgs.SendMessage(ctx, req(bob, &parleyv1.SendMessageRequest{ChatId: chatID, ClientMessageId: "b", Text: "hi"})); err != nil {
				t.Errorf("bob's send: %v", err)
			}
		})
	}
}

// TestChangeLimit: the calls that change messages and chats share a
// budget per user, the send limit's size, apart from the sends'; a
// request the request rules refuse takes nothing of it; leaving a chat is
// never refused; other users are not held back.
func TestChangeLimit(t *testing.T) {
	// Nothing refills while the test runs: the burst is all there is.
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.Sends = chat.SendLimit{Rate: 1, Period: time.Hour, Burst: 4}
	}))
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			ctx := context.Background()
			alice, bob := newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, bob, "g", alice).GetId()
			m := send(t, bob, g, "hi")
			reaction := func(u *user, add bool) error {
				var err error
				if add {
					_, err = u.msgs.AddReaction(ctx, req(u, &parleyv1.AddReactionRequest{ChatId: g, MessageId: m.GetId(), Emoji: "👍"}))
				} else {
					_, err = u.msgs.RemoveReaction(ctx, req(u, &parleyv1.RemoveReactionRequest{ChatId: g, MessageId: m.GetId(), Emoji: "👍"}))
				}
				return err
			}
			_, err := alice.msgs.AddReaction(ctx, req(alice, &parleyv1.AddReactionRequest{ChatId: "not a chat", MessageId: m.GetId(), Emoji: "👍"}))
			wantCode(t, err, connect.CodeInvalidArgument)
			for i := range 4 {
				if err := reaction(alice, i%2 == 0); err != nil {
					t.Fatalf("change %d of the burst: %v", i+1, err)
				}
			}
			servertest.WantRetry(t, reaction(alice, true))
			if got := listAll(t, bob, g)[0].GetReactions(); len(got) != 0 {
				t.Errorf("after the refusal the message has reactions %v, want none", got)
			}
			// Her sends have their own budget, and bob his.
			send(t, alice, g, "still here")
			if err := reaction(bob, true); err != nil {
				t.Errorf("bob's reaction: %v", err)
			}
			if _, err := alice.chats.LeaveChat(ctx, req(alice, &parleyv1.LeaveChatRequest{ChatId: g})); err != nil {
				t.Errorf("LeaveChat past the limit: %v", err)
			}
		})
	}
}
