package chat_test

import (
	"context"
	"testing"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

func TestSeed(t *testing.T) {
	srv := servertest.New(t, servertest.WithOwnMongoDatabase(t))
	prefix := servertest.SharedStores(t).RedisPrefix
	ctx := context.Background()
	var users []*user
	var ids []int
	for range 4 {
		u := newUser(t, srv, servertest.Protocols[0])
		users = append(users, u)
		ids = append(ids, int(u.id))
	}
	byID := map[int32]*user{}
	for _, u := range users {
		byID[u.id] = u
	}

	t.Run("private chats", func(t *testing.T) {
		// A chat the API made first: Seed passes over its pair.
		taken := servertest.PrivateChat(t, users[0].chats, users[0].token, users[1].id).GetId()
		res, err := chat.Seed(ctx, srv.App.Mongo(), srv.App.Redis(), prefix, chat.SeedSpec{
			UserIDs: ids, Chats: 5, Messages: 1203, TextBytes: 50,
		})
		if err != nil {
			t.Fatalf("Seed: %v", err)
		}
		if got, want := len(res.Chats), 5; got != want {
			t.Fatalf("seeded %d chats, want %d", got, want)
		}
		if got, want := res.Messages, 5*1203; got != want {
			t.Errorf("seeded %d messages, want %d", got, want)
		}
		for _, c := range res.Chats {
			if c.ID == taken {
				t.Errorf("seeded the chat the API created")
			}
			if c.FirstSeq != 1 || c.LastSeq != 1203 {
				t.Errorf("seqs %d..%d, want 1..1203", c.FirstSeq, c.LastSeq)
			}
		}
		c := res.Chats[0]
		u := byID[int32(c.Members[0])]
		got := getChat(t, u, c.ID)
		if got.GetLastMessage().GetSeq() != 1203 {
			t.Errorf("last message seq %d, want 1203", got.GetLastMessage().GetSeq())
		}
		msgs := listAll(t, u, c.ID)
		if len(msgs) != 1203 {
			t.Fatalf("listed %d messages, want 1203", len(msgs))
		}
		for i, m := range msgs {
			if m.GetSeq() != int64(i+1) || len(m.GetText()) != 50 {
				t.Fatalf("message %d: seq %d, text of %d bytes; want seq %d, 50 bytes", i, m.GetSeq(), len(m.GetText()), i+1)
			}
		}
		if m := send(t, u, c.ID, "after the seed"); m.GetSeq() != 1204 {
			t.Errorf("sent seq %d, want 1204", m.GetSeq())
		}
	})

	t.Run("existing chat", func(t *testing.T) {
		g := group(t, users[0], "big", users[1], users[2])
		send(t, users[1], g.GetId(), "before")
		res, err := chat.Seed(ctx, srv.App.Mongo(), srv.App.Redis(), prefix, chat.SeedSpec{ChatID: g.GetId(), Messages: 1100, Read: true})
		if err != nil {
			t.Fatalf("Seed: %v", err)
		}
		if c := res.Chats[0]; c.FirstSeq != 2 || c.LastSeq != 1101 {
			t.Errorf("seqs %d..%d, want 2..1101", c.FirstSeq, c.LastSeq)
		}
		if m := send(t, users[2], g.GetId(), "after"); m.GetSeq() != 1102 {
			t.Errorf("sent seq %d, want 1102", m.GetSeq())
		}
		msgs := listAll(t, users[0], g.GetId())
		if len(msgs) != 1102 {
			t.Fatalf("listed %d messages, want 1102", len(msgs))
		}
		if got := getChat(t, users[0], g.GetId()).GetUnreadCount(); got != 1 {
			t.Errorf("unread %d, want 1 (the message sent after the seed)", got)
		}
	})

	t.Run("groups", func(t *testing.T) {
		res, err := chat.Seed(ctx, srv.App.Mongo(), srv.App.Redis(), prefix, chat.SeedSpec{
			UserIDs: ids, Chats: 3, GroupSize: 3, Messages: 10,
		})
		if err != nil {
			t.Fatalf("Seed: %v", err)
		}
		c := res.Chats[2]
		u := byID[int32(c.Members[0])]
		got := getChat(t, u, c.ID)
		if got.GetType() != parleyv1.ChatType_CHAT_TYPE_GROUP || len(got.GetParticipants()) != 3 {
			t.Errorf("chat %v, want a group of 3", got)
		}
	})

	t.Run("too few pairs", func(t *testing.T) {
		_, err := chat.Seed(ctx, srv.App.Mongo(), srv.App.Redis(), prefix, chat.SeedSpec{UserIDs: ids, Chats: 100, Messages: 1})
		if err == nil {
			t.Errorf("Seed of 100 private chats between 4 users: no error")
		}
	})
}
