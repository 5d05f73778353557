package chat_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

// These tests race two writers that touch the same chat, member or
// message. On MongoDB and FerretDB 2 each write is one atomic
// single-document update; on FerretDB 1.x, which rewrites a whole document
// on every update so that writes to different fields of one document can
// undo each other, the store serializes them (see doclock). Both must
// keep every acknowledged write.

const raceRounds = 15

// A MarkDelivered racing a MarkRead must not undo the read position.
func TestRace_ReadAndDelivered(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[0])
	c := group(t, a, "g", b)
	for i := range raceRounds {
		m1 := send(t, a, c.GetId(), "x")
		m2 := send(t, a, c.GetId(), "y")
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := b.msgs.MarkRead(context.Background(), req(b, &parleyv1.MarkReadRequest{ChatId: c.GetId(), UpToSeq: m1.GetSeq()})); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := b.msgs.MarkDelivered(context.Background(), req(b, &parleyv1.MarkDeliveredRequest{ChatId: c.GetId(), UpToSeq: m2.GetSeq()})); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		if got := getChat(t, b, c.GetId()).GetUnreadCount(); got != 1 {
			t.Fatalf("round %d: unread = %d after reading m1 of m1, m2; want 1", i, got)
		}
	}
}

// A DeleteMessage racing another member's MarkRead must stay deleted.
func TestRace_DeleteAndRead(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[0])
	c := group(t, a, "g", b)
	for i := range raceRounds {
		m := send(t, a, c.GetId(), fmt.Sprint("secret ", i))
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := a.msgs.DeleteMessage(context.Background(), req(a, &parleyv1.DeleteMessageRequest{ChatId: c.GetId(), MessageId: m.GetId()})); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := b.msgs.MarkRead(context.Background(), req(b, &parleyv1.MarkReadRequest{ChatId: c.GetId(), UpToSeq: m.GetSeq()})); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
	}
	for _, m := range listAll(t, b, c.GetId()) {
		if !m.GetDeleted() || m.GetText() != "" {
			t.Errorf("seq %d: deleted=%v text=%q; an acknowledged delete was undone", m.GetSeq(), m.GetDeleted(), m.GetText())
		}
	}
}

// A rename racing sends must stick.
func TestRace_RenameAndSend(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[0])
	c := group(t, a, "g", b)
	for i := range raceRounds {
		name := fmt.Sprint("name ", i)
		var wg sync.WaitGroup
		wg.Go(func() {
			send(t, b, c.GetId(), "x")
			send(t, b, c.GetId(), "y")
		})
		wg.Go(func() {
			if _, err := a.chats.UpdateChat(context.Background(), req(a, &parleyv1.UpdateChatRequest{ChatId: c.GetId(), Name: proto.String(name)})); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		if got := getChat(t, a, c.GetId()).GetName(); got != name {
			t.Fatalf("round %d: name = %q, want %q: an acknowledged rename was lost", i, got, name)
		}
	}
}

// A counter that goes back into a gap below the chat's last message must
// not hand out a seq below it.
func TestRace_SeqCounterBackIntoGap(t *testing.T) {
	srv := servertest.New(t)
	a, b := newUser(t, srv, servertest.Protocols[0]), newUser(t, srv, servertest.Protocols[0])
	c := group(t, a, "g", b)
	var last int64
	for range 4 {
		last = send(t, a, c.GetId(), "m").GetSeq()
	}
	chatID, _ := bson.ObjectIDFromHex(c.GetId())
	ctx := context.Background()
	// Make a gap at last-1, as a failed send would, and roll the counter back
	// to just below it.
	if _, err := srv.App.Mongo().Collection("messages").DeleteOne(ctx, bson.D{{Key: "chatId", Value: chatID}, {Key: "seq", Value: last - 1}}); err != nil {
		t.Fatal(err)
	}
	key := servertest.SharedStores(t).RedisPrefix + "chat:{" + c.GetId() + "}:seq"
	if err := srv.App.Redis().Set(ctx, key, last-2, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := send(t, b, c.GetId(), "after the rollback").GetSeq(); got <= last {
		t.Errorf("seq = %d after the counter went back, want more than %d", got, last)
	}
}

// A reader that pages forward by seq while members send must see every
// message: sends commit out of seq order, and the page stops below any
// seq still being written.
func TestRace_ResumeBySeqWhileSending(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	var us []*user
	for range 5 {
		us = append(us, newUser(t, srv, servertest.Protocols[0]))
	}
	c := group(t, us[0], "g", us[1:]...)
	reader := us[4]
	var sending sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		sending.Go(func() {
			for n := range 40 {
				if _, err := us[i].msgs.SendMessage(context.Background(), req(us[i], &parleyv1.SendMessageRequest{
					ChatId: c.GetId(), ClientMessageId: fmt.Sprint(i, "-", n), Text: "x",
				})); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { sending.Wait(); close(stop) }()
	seen := map[int64]bool{}
	after := int64(0)
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		default:
		}
		for {
			res, err := reader.msgs.ListMessages(context.Background(), req(reader, &parleyv1.ListMessagesRequest{
				ChatId: c.GetId(), Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: after}, Limit: 100,
			}))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range res.Msg.GetMessages() {
				seen[m.GetSeq()] = true
				after = m.GetSeq()
			}
			if !res.Msg.GetHasMore() {
				break
			}
		}
	}
	all := listAll(t, reader, c.GetId())
	for _, m := range all {
		if !seen[m.GetSeq()] {
			t.Errorf("the paging reader never saw seq %d", m.GetSeq())
		}
	}
	if len(all) != 160 {
		t.Errorf("chat holds %d messages, want 160", len(all))
	}
}

// Concurrent sends to one chat combine their lastMessage updates: once
// they all returned, the chat's last message is the highest seq sent.
func TestRace_SendsSetLastMessage(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	a, b := newUser(t, srv, servertest.Protocols[1]), newUser(t, srv, servertest.Protocols[1])
	c := group(t, a, "g", b)
	for round := range 3 {
		var mu sync.Mutex
		var top *parleyv1.Message
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := range 4 {
					u := a
					if w%2 == 1 {
						u = b
					}
					m := send(t, u, c.GetId(), fmt.Sprintf("round %d worker %d message %d", round, w, i))
					mu.Lock()
					if top == nil || m.GetSeq() > top.GetSeq() {
						top = m
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		last := getChat(t, a, c.GetId()).GetLastMessage()
		if last.GetSeq() != top.GetSeq() || last.GetMessageId() != top.GetId() || last.GetPreview() != top.GetText() {
			t.Fatalf("round %d: last message = seq %d %q, want seq %d %q", round, last.GetSeq(), last.GetPreview(), top.GetSeq(), top.GetText())
		}
	}
}

// An EditMessage racing a DeleteMessage of the same message must not
// bring its text back: not in the chat's preview, nor in an edit
// announced after the deletion.
func TestRace_EditAndDelete(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	p := servertest.Protocols[0]
	a, b := newUser(t, srv, p), newUser(t, srv, p)
	c := group(t, a, "g", b)
	stream := subscribe(t, srv, p, b)
	for i := range raceRounds {
		m := send(t, a, c.GetId(), fmt.Sprint("secret ", i))
		edited := fmt.Sprint("edited ", i)
		var wg sync.WaitGroup
		wg.Go(func() {
			_, err := a.msgs.EditMessage(context.Background(), req(a, &parleyv1.EditMessageRequest{ChatId: c.GetId(), MessageId: m.GetId(), Text: edited}))
			if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := a.msgs.DeleteMessage(context.Background(), req(a, &parleyv1.DeleteMessageRequest{ChatId: c.GetId(), MessageId: m.GetId()})); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		if got := getChat(t, b, c.GetId()).GetLastMessage().GetPreview(); got != "" {
			t.Errorf("round %d: the chat's preview is %q after the message's deletion", i, got)
		}
		// The events of m up to the next message: the last says it is
		// deleted.
		end := send(t, a, c.GetId(), fmt.Sprint("end ", i))
		var last *parleyv1.Message
		for {
			ev := nextEvent(t, stream, func(*parleyv1.Event) bool { return true })
			if ev.GetMessageCreated().GetMessage().GetId() == end.GetId() {
				break
			}
			for _, me := range []*parleyv1.MessageEvent{ev.GetMessageEdited(), ev.GetMessageDeleted()} {
				if me.GetMessage().GetId() == m.GetId() {
					last = me.GetMessage()
				}
			}
		}
		if !last.GetDeleted() || last.GetText() != "" {
			t.Errorf("round %d: the last event of the message shows deleted=%v text=%q", i, last.GetDeleted(), last.GetText())
		}
	}
}

// Of two renames within a millisecond, the later one sticks: it was
// acknowledged.
func TestRename_WithinAMillisecond(t *testing.T) {
	clock := servertest.NewClock()
	srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) { cfg.Now = clock.Now }))
	a := newUser(t, srv, servertest.Protocols[0])
	c := group(t, a, "g")
	// At the start of a millisecond, so that both fall in it.
	clock.Advance(time.Millisecond - time.Duration(clock.Now().Nanosecond()%int(time.Millisecond)))
	for i, name := range []string{"first", "second"} {
		if i > 0 {
			clock.Advance(100 * time.Microsecond)
		}
		if _, err := a.chats.UpdateChat(context.Background(), req(a, &parleyv1.UpdateChatRequest{ChatId: c.GetId(), Name: proto.String(name)})); err != nil {
			t.Fatal(err)
		}
	}
	if got := getChat(t, a, c.GetId()).GetName(); got != "second" {
		t.Errorf("name = %q after renames to %q then %q, 100 µs apart", got, "first", "second")
	}
}
