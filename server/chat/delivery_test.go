package chat_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/servertest"
)

// A client marks a message delivered as soon as its message_created
// event arrives on its stream (the web chat does): the position must
// move to that seq, never stop one short, and the sender must hear that
// the chat is delivered up to its last message.
func TestMessageService_MarkDeliveredOnLiveEvent(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b := newUser(t, srv, p), newUser(t, srv, p)
			c := group(t, a, "g", b)
			live := servertest.Client(srv, p, parleyv1connect.NewLiveServiceClient)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			stream, err := live.Subscribe(ctx, req(b, &parleyv1.SubscribeRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			for stream.Receive() && stream.Msg().GetEvent().GetReady() == nil {
			}
			senders, err := live.Subscribe(ctx, req(a, &parleyv1.SubscribeRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			defer senders.Close()
			for senders.Receive() && senders.Msg().GetEvent().GetReady() == nil {
			}
			// Senders in the background, as in a busy group.
			sent := make(chan error, 1)
			go func() {
				for range 15 {
					if _, err := a.msgs.SendMessage(ctx, req(a, &parleyv1.SendMessageRequest{
						ChatId: c.GetId(), ClientMessageId: servertest.UniqueName("d"), Text: "hi",
					})); err != nil {
						sent <- err
						return
					}
				}
				sent <- nil
			}()
			for n := 0; n < 15; {
				if !stream.Receive() {
					t.Fatalf("stream ended: %v", stream.Err())
				}
				m := stream.Msg().GetEvent().GetMessageCreated().GetMessage()
				if m == nil {
					continue
				}
				n++
				res, err := b.msgs.MarkDelivered(ctx, req(b, &parleyv1.MarkDeliveredRequest{ChatId: c.GetId(), UpToSeq: m.GetSeq()}))
				if err != nil {
					t.Fatal(err)
				}
				if got := res.Msg.GetDeliveredSeq(); got < m.GetSeq() {
					t.Fatalf("MarkDelivered(%d) right after its event = %d; want %d", m.GetSeq(), got, m.GetSeq())
				}
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			// The sender's ticks: the chat's delivered position reaches
			// the last message, as announced to the sender.
			last := int64(0)
			for last < 15 {
				if !senders.Receive() {
					t.Fatalf("the sender's stream ended (%v) with the chat delivered up to %d; want 15", senders.Err(), last)
				}
				if p := senders.Msg().GetEvent().GetPositionsChanged(); p != nil {
					last = max(last, p.GetChatDeliveredSeq())
				}
			}
		})
	}
}

// A retried send takes no seq, and answers the message's status now.
func TestMessageService_RetryTakesNoSeq(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[1])
	c := group(t, a, "g", b)
	sendKey := func(key string) *parleyv1.Message {
		t.Helper()
		res, err := a.msgs.SendMessage(context.Background(), req(a, &parleyv1.SendMessageRequest{
			ChatId: c.GetId(), ClientMessageId: key, Text: "once",
		}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetMessage()
	}
	first := sendKey("k1")
	if _, err := b.msgs.MarkRead(context.Background(), req(b, &parleyv1.MarkReadRequest{ChatId: c.GetId(), UpToSeq: first.GetSeq()})); err != nil {
		t.Fatal(err)
	}
	retry := sendKey("k1")
	if retry.GetId() != first.GetId() || retry.GetSeq() != first.GetSeq() {
		t.Fatalf("retry got message %s seq %d; want %s seq %d", retry.GetId(), retry.GetSeq(), first.GetId(), first.GetSeq())
	}
	if got := retry.GetStatus(); got != parleyv1.MessageStatus_MESSAGE_STATUS_READ {
		t.Errorf("retry of a message the peer read answered status %v; want READ", got)
	}
	next := sendKey("k2")
	if next.GetSeq() != first.GetSeq()+1 {
		t.Errorf("the send after a retry got seq %d; want %d (the retry took none)", next.GetSeq(), first.GetSeq()+1)
	}
	var seqs []int64
	for _, m := range listAll(t, b, c.GetId()) {
		seqs = append(seqs, m.GetSeq())
	}
	if len(seqs) != 2 || seqs[0] != first.GetSeq() || seqs[1] != first.GetSeq()+1 {
		t.Errorf("the chat lists seqs %v; want [%d %d]", seqs, first.GetSeq(), first.GetSeq()+1)
	}
}

// TestMessageService_RetryAfterLostAttempt: a send whose earlier attempt
// took a seq and stored nothing (its server died in between: the seq
// allocator's mark of the send is there, the message is not) is stored
// when the client retries, once.
func TestMessageService_RetryAfterLostAttempt(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	ctx := context.Background()
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[1])
	c := group(t, a, "g", b)
	send := func(key string) *parleyv1.Message {
		t.Helper()
		res, err := a.msgs.SendMessage(ctx, req(a, &parleyv1.SendMessageRequest{ChatId: c.GetId(), ClientMessageId: key, Text: key}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetMessage()
	}
	first := send("k1")
	// The lost attempt at k2: its seq taken, its send marked.
	prefix := servertest.SharedStores(t).RedisPrefix + "chat:{" + c.GetId() + "}:"
	rdb := srv.App.Redis()
	lost, err := rdb.Incr(ctx, prefix+"seq").Result()
	if err != nil {
		t.Fatal(err)
	}
	mark := prefix + "sent:" + c.GetId() + ":" + strconv.Itoa(int(a.id)) + ":k2"
	if err := rdb.Set(ctx, mark, lost, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	retry := send("k2")
	if retry.GetSeq() <= lost || retry.GetText() != "k2" {
		t.Fatalf("the retry stored seq %d %q; want a seq after the lost attempt's %d", retry.GetSeq(), retry.GetText(), lost)
	}
	again := send("k2")
	if again.GetId() != retry.GetId() {
		t.Errorf("a second retry got message %s; want the stored %s", again.GetId(), retry.GetId())
	}
	var keys []string
	for _, m := range listAll(t, b, c.GetId()) {
		keys = append(keys, m.GetClientMessageId())
	}
	if len(keys) != 2 || keys[0] != first.GetClientMessageId() || keys[1] != "k2" {
		t.Errorf("the chat holds %v; want [k1 k2]", keys)
	}
}
