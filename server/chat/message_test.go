package chat_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// TestMessageService_ConcurrentSenders has 8 members send 200 messages each
// into one group at once.
func TestMessageService_ConcurrentSenders(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t)
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	const senders, each = 8, 200
	var users []*user
	for i := range senders {
		users = append(users, newUser(t, srv, servertest.Protocols[i%2]))
	}
	c := group(t, users[0], "busy", users[1:]...)
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Go(func() {
			for n := range each {
				_, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{
					ChatId: c.GetId(), ClientMessageId: fmt.Sprintf("s%d-%d", i, n), Text: fmt.Sprintf("%d:%d", i, n),
				}))
				if err != nil {
					t.Errorf("sender %d message %d: %v", i, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	msgs := listAll(t, users[0], c.GetId())
	if len(msgs) != senders*each {
		t.Fatalf("listed %d messages, want %d", len(msgs), senders*each)
	}
	seen := map[string]bool{}
	next := make([]int, senders)
	for i, m := range msgs {
		if i > 0 && m.GetSeq() <= msgs[i-1].GetSeq() {
			t.Fatalf("seq %d after %d: want strictly increasing", m.GetSeq(), msgs[i-1].GetSeq())
		}
		if seen[m.GetText()] {
			t.Fatalf("message %q listed twice", m.GetText())
		}
		seen[m.GetText()] = true
		var s, n int
		fmt.Sscanf(m.GetText(), "%d:%d", &s, &n)
		if n != next[s] {
			t.Fatalf("sender %d: message %d listed where %d was due; want send order", s, n, next[s])
		}
		next[s]++
	}
	if got := getChat(t, users[1], c.GetId()).GetLastMessage().GetSeq(); got != msgs[len(msgs)-1].GetSeq() {
		t.Errorf("lastMessage.seq = %d, want %d", got, msgs[len(msgs)-1].GetSeq())
	}
}

// TestMessageService_Idempotent sends one message ten times at once with
// one client_message_id.
func TestMessageService_Idempotent(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b := newUser(t, srv, p), newUser(t, srv, p)
			c := group(t, a, "g", b)
			var wg sync.WaitGroup
			ids := make([]string, 10)
			for i := range ids {
				wg.Go(func() {
					res, err := a.msgs.SendMessage(context.Background(), req(a, &parleyv1.SendMessageRequest{
						ChatId: c.GetId(), ClientMessageId: "retry-me", Text: "once",
					}))
					if err != nil {
						t.Errorf("SendMessage: %v", err)
						return
					}
					ids[i] = res.Msg.GetMessage().GetId()
				})
			}
			wg.Wait()
			for _, id := range ids[1:] {
				if id != ids[0] {
					t.Fatalf("retries returned messages %v, want one", ids)
				}
			}
			if msgs := listAll(t, b, c.GetId()); len(msgs) != 1 {
				t.Errorf("chat holds %d messages, want 1", len(msgs))
			}
			// The same key from another sender is another message.
			res, err := b.msgs.SendMessage(context.Background(), req(b, &parleyv1.SendMessageRequest{
				ChatId: c.GetId(), ClientMessageId: "retry-me", Text: "mine",
			}))
			if err != nil || res.Msg.GetMessage().GetId() == ids[0] {
				t.Errorf("other sender's message = %v, %v; want a new message", res, err)
			}
		})
	}
}

// TestMessageService_SeqCounterLost deletes and lowers the Redis counter
// between sends.
func TestMessageService_SeqCounterLost(t *testing.T) {
	srv := servertest.New(t)
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[0])
	c := group(t, a, "g", b)
	var last int64
	for range 3 {
		last = send(t, a, c.GetId(), "before").GetSeq()
	}
	key := servertest.SharedStores(t).RedisPrefix + "chat:{" + c.GetId() + "}:seq"
	rdb := srv.App.Redis()
	ctx := context.Background()
	if n, err := rdb.Del(ctx, key).Result(); err != nil || n != 1 {
		t.Fatalf("DEL %s = %d, %v; want the counter deleted", key, n, err)
	}
	m := send(t, b, c.GetId(), "after the loss")
	if m.GetSeq() <= last {
		t.Fatalf("seq after losing the counter = %d, want more than %d", m.GetSeq(), last)
	}
	if err := rdb.Set(ctx, key, 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	m2 := send(t, a, c.GetId(), "after a rollback")
	if m2.GetSeq() <= m.GetSeq() {
		t.Fatalf("seq after the counter went back = %d, want more than %d", m2.GetSeq(), m.GetSeq())
	}
	if msgs := listAll(t, a, c.GetId()); len(msgs) != 5 {
		t.Errorf("chat holds %d messages, want 5", len(msgs))
	}
}

// TestMessageService_Paging pages through 1,000 messages both ways.
func TestMessageService_Paging(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t)
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	a, b := newUser(t, srv, servertest.Protocols[1]), newUser(t, srv, servertest.Protocols[1])
	c := group(t, a, "g", b)
	const total = 1000
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := w; n < total; n += 4 {
				if _, err := a.msgs.SendMessage(context.Background(), req(a, &parleyv1.SendMessageRequest{
					ChatId: c.GetId(), ClientMessageId: fmt.Sprintf("p%d", n), Text: fmt.Sprint(n),
				})); err != nil {
					t.Errorf("SendMessage: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	forward := listAll(t, b, c.GetId())
	if len(forward) != total {
		t.Fatalf("forward: %d messages, want %d", len(forward), total)
	}
	// Backward from the newest, 37 at a time.
	var backward []*parleyv1.Message
	res, err := b.msgs.ListMessages(context.Background(), req(b, &parleyv1.ListMessagesRequest{ChatId: c.GetId(), Limit: 37}))
	for ; ; res, err = b.msgs.ListMessages(context.Background(), req(b, &parleyv1.ListMessagesRequest{
		ChatId: c.GetId(), Limit: 37, Cursor: &parleyv1.ListMessagesRequest_BeforeSeq{BeforeSeq: backward[0].GetSeq()},
	})) {
		if err != nil {
			t.Fatalf("ListMessages: %v", err)
		}
		backward = append(res.Msg.GetMessages(), backward...)
		if !res.Msg.GetHasMore() {
			break
		}
	}
	if len(backward) != total {
		t.Fatalf("backward: %d messages, want %d", len(backward), total)
	}
	for i := range forward {
		if forward[i].GetId() != backward[i].GetId() {
			t.Fatalf("message %d: forward %s, backward %s", i, forward[i].GetId(), backward[i].GetId())
		}
		if i > 0 && forward[i].GetSeq() <= forward[i-1].GetSeq() {
			t.Fatalf("seq not increasing at %d", i)
		}
	}
}

func statusOf(t *testing.T, u *user, chatID string, seq int64) parleyv1.MessageStatus {
	t.Helper()
	for _, m := range listAll(t, u, chatID) {
		if m.GetSeq() == seq {
			return m.GetStatus()
		}
	}
	t.Fatalf("no message with seq %d", seq)
	return 0
}

func unread(t *testing.T, u *user, chatID string) int64 {
	t.Helper()
	return getChat(t, u, chatID).GetUnreadCount()
}

// TestMessageService_StatusAndUnread walks a private and a three-member
// group conversation step by step.
func TestMessageService_StatusAndUnread(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	const (
		sent      = parleyv1.MessageStatus_MESSAGE_STATUS_SENT
		delivered = parleyv1.MessageStatus_MESSAGE_STATUS_DELIVERED
		read      = parleyv1.MessageStatus_MESSAGE_STATUS_READ
	)
	t.Run("private", func(t *testing.T) {
		a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[1])
		res, err := a.chats.CreatePrivateChat(ctx, req(a, &parleyv1.CreatePrivateChatRequest{PeerId: b.id}))
		if err != nil {
			t.Fatal(err)
		}
		id := res.Msg.GetChat().GetId()
		servertest.AcceptRequest(t, b.chats, b.token, id)
		m1 := send(t, a, id, "hi")
		m2 := send(t, a, id, "there")
		if got := statusOf(t, a, id, m1.GetSeq()); got != sent {
			t.Errorf("after sending: %v, want %v", got, sent)
		}
		if got, want := unread(t, b, id), int64(2); got != want {
			t.Errorf("b's unread = %d, want %d", got, want)
		}
		list, err := b.chats.ListChats(ctx, req(b, &parleyv1.ListChatsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if got := list.Msg.GetChats(); len(got) != 1 || got[0].GetUnreadCount() != 2 || got[0].GetLastMessage().GetPreview() != "there" {
			t.Errorf("b's ListChats = %v, want the chat with 2 unread and the last preview", got)
		}
		if got := unread(t, a, id); got != 0 {
			t.Errorf("a's unread = %d, want 0 (own messages)", got)
		}
		if _, err := b.msgs.MarkDelivered(ctx, req(b, &parleyv1.MarkDeliveredRequest{ChatId: id, UpToSeq: m2.GetSeq()})); err != nil {
			t.Fatal(err)
		}
		if got := statusOf(t, a, id, m2.GetSeq()); got != delivered {
			t.Errorf("after delivery: %v, want %v", got, delivered)
		}
		mr, err := b.msgs.MarkRead(ctx, req(b, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: m1.GetSeq()}))
		if err != nil {
			t.Fatal(err)
		}
		if mr.Msg.GetReadSeq() != m1.GetSeq() || mr.Msg.GetUnreadCount() != 1 {
			t.Errorf("MarkRead(m1) = %v, want read_seq %d and 1 unread", mr.Msg, m1.GetSeq())
		}
		if got := statusOf(t, a, id, m1.GetSeq()); got != read {
			t.Errorf("m1 after reading it: %v, want %v", got, read)
		}
		if got := statusOf(t, a, id, m2.GetSeq()); got != delivered {
			t.Errorf("m2 after reading m1: %v, want %v", got, delivered)
		}
		// Beyond the last message: clamped. Backwards: no move.
		mr, err = b.msgs.MarkRead(ctx, req(b, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: m2.GetSeq() + 100}))
		if err != nil {
			t.Fatal(err)
		}
		if mr.Msg.GetReadSeq() != m2.GetSeq() || mr.Msg.GetUnreadCount() != 0 {
			t.Errorf("MarkRead past the end = %v, want read_seq %d and 0 unread", mr.Msg, m2.GetSeq())
		}
		mr, err = b.msgs.MarkRead(ctx, req(b, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: m1.GetSeq()}))
		if err != nil {
			t.Fatal(err)
		}
		if mr.Msg.GetReadSeq() != m2.GetSeq() {
			t.Errorf("MarkRead backwards moved read_seq to %d, want it to stay %d", mr.Msg.GetReadSeq(), m2.GetSeq())
		}
		// b answers: that reads a's messages for b, and b's own is sent.
		m3 := send(t, b, id, "hello")
		if got := statusOf(t, b, id, m3.GetSeq()); got != sent {
			t.Errorf("b's reply: %v, want %v", got, sent)
		}
		if got := unread(t, a, id); got != 1 {
			t.Errorf("a's unread after b's reply = %d, want 1", got)
		}
	})
	t.Run("group of three", func(t *testing.T) {
		a, b, c := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[1]), newUser(t, srv, servertest.Protocols[0])
		id := group(t, a, "trio", b, c).GetId()
		m := send(t, a, id, "news")
		for _, u := range []*user{b, c} {
			if got := unread(t, u, id); got != 1 {
				t.Errorf("unread = %d, want 1", got)
			}
		}
		if _, err := b.msgs.MarkRead(ctx, req(b, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: m.GetSeq()})); err != nil {
			t.Fatal(err)
		}
		if got := statusOf(t, a, id, m.GetSeq()); got != sent {
			t.Errorf("read by one of two: %v, want %v", got, sent)
		}
		if _, err := c.msgs.MarkDelivered(ctx, req(c, &parleyv1.MarkDeliveredRequest{ChatId: id, UpToSeq: m.GetSeq()})); err != nil {
			t.Fatal(err)
		}
		if got := statusOf(t, a, id, m.GetSeq()); got != delivered {
			t.Errorf("read by one, delivered to the other: %v, want %v", got, delivered)
		}
		if _, err := c.msgs.MarkRead(ctx, req(c, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: m.GetSeq()})); err != nil {
			t.Fatal(err)
		}
		if got := statusOf(t, a, id, m.GetSeq()); got != read {
			t.Errorf("read by both: %v, want %v", got, read)
		}
		if got := unread(t, c, id); got != 0 {
			t.Errorf("c's unread = %d, want 0", got)
		}
	})
}

func TestMessageService_EditDelete(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, a, b, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			id := group(t, admin, "g", a, b).GetId()
			m := send(t, a, id, "first draft")

			_, err := b.msgs.EditMessage(ctx, req(b, &parleyv1.EditMessageRequest{ChatId: id, MessageId: m.GetId(), Text: "not mine"}))
			wantCode(t, err, connect.CodePermissionDenied)
			_, err = outsider.msgs.EditMessage(ctx, req(outsider, &parleyv1.EditMessageRequest{ChatId: id, MessageId: m.GetId(), Text: "x"}))
			wantCode(t, err, connect.CodeNotFound)
			res, err := a.msgs.EditMessage(ctx, req(a, &parleyv1.EditMessageRequest{ChatId: id, MessageId: m.GetId(), Text: "final"}))
			if err != nil {
				t.Fatalf("EditMessage: %v", err)
			}
			if res.Msg.GetMessage().GetText() != "final" || res.Msg.GetMessage().GetEditedAt() == nil {
				t.Errorf("edited = %v", res.Msg.GetMessage())
			}
			if got := getChat(t, b, id).GetLastMessage().GetPreview(); got != "final" {
				t.Errorf("preview = %q, want the edited text", got)
			}

			_, err = b.msgs.DeleteMessage(ctx, req(b, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: m.GetId()}))
			wantCode(t, err, connect.CodePermissionDenied)
			_, err = outsider.msgs.DeleteMessage(ctx, req(outsider, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: m.GetId()}))
			wantCode(t, err, connect.CodeNotFound)
			if _, err := admin.msgs.DeleteMessage(ctx, req(admin, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: m.GetId()})); err != nil {
				t.Fatalf("admin DeleteMessage: %v", err)
			}
			msgs := listAll(t, b, id)
			if len(msgs) != 1 || !msgs[0].GetDeleted() || msgs[0].GetText() != "" || msgs[0].GetSeq() != m.GetSeq() {
				t.Errorf("after delete: %v, want one tombstone with seq %d", msgs, m.GetSeq())
			}
			_, err = a.msgs.EditMessage(ctx, req(a, &parleyv1.EditMessageRequest{ChatId: id, MessageId: m.GetId(), Text: "revive"}))
			wantCode(t, err, connect.CodeFailedPrecondition)
			if got := unread(t, b, id); got != 0 {
				t.Errorf("unread with only a deleted message = %d, want 0", got)
			}
		})
	}
}

func TestMessageService_BadInput(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			id := group(t, a, "g", b).GetId()
			literal := `{"$ne": null} $where '; DROP TABLE messages; --`
			if got := send(t, a, id, literal).GetText(); got != literal {
				t.Errorf("text = %q, want it stored literally", got)
			}
			cases := []struct {
				name string
				u    *user
				req  *parleyv1.SendMessageRequest
				want connect.Code
			}{
				{"outsider", outsider, &parleyv1.SendMessageRequest{ChatId: id, ClientMessageId: "x1", Text: "hi"}, connect.CodeNotFound},
				{"empty text", a, &parleyv1.SendMessageRequest{ChatId: id, ClientMessageId: "x2", Text: ""}, connect.CodeInvalidArgument},
				{"text over 4096 characters", a, &parleyv1.SendMessageRequest{ChatId: id, ClientMessageId: "x3", Text: strings.Repeat("ж", 4097)}, connect.CodeInvalidArgument},
				{"no client id", a, &parleyv1.SendMessageRequest{ChatId: id, Text: "hi"}, connect.CodeInvalidArgument},
				{"bad chat id", a, &parleyv1.SendMessageRequest{ChatId: "nope", ClientMessageId: "x4", Text: "hi"}, connect.CodeInvalidArgument},
				{"unknown chat", a, &parleyv1.SendMessageRequest{ChatId: "0123456789abcdef01234567", ClientMessageId: "x5", Text: "hi"}, connect.CodeNotFound},
			}
			for _, tc := range cases {
				_, err := tc.u.msgs.SendMessage(ctx, req(tc.u, tc.req))
				if connect.CodeOf(err) != tc.want {
					t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
				}
			}
			if msgs := listAll(t, a, id); len(msgs) != 1 {
				t.Errorf("chat holds %d messages after refused sends, want 1", len(msgs))
			}
			for name, call := range map[string]func() error{
				"ListMessages": func() error {
					_, err := outsider.msgs.ListMessages(ctx, req(outsider, &parleyv1.ListMessagesRequest{ChatId: id}))
					return err
				},
				"MarkRead": func() error {
					_, err := outsider.msgs.MarkRead(ctx, req(outsider, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: 1}))
					return err
				},
				"MarkDelivered": func() error {
					_, err := outsider.msgs.MarkDelivered(ctx, req(outsider, &parleyv1.MarkDeliveredRequest{ChatId: id, UpToSeq: 1}))
					return err
				},
			} {
				if err := call(); connect.CodeOf(err) != connect.CodeNotFound {
					t.Errorf("outsider %s: err = %v, want not_found", name, err)
				}
			}
		})
	}
}
