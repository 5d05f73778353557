package chat_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/servertest"
)

// TestSendMessage_ChecksOnEveryInstance: each instance caches what a send
// checks of its chat, and a change made through another instance takes
// effect there at once: the next send through the instance that cached
// the chat is judged by the chat as it is now. Sends go through one
// instance (a), which caches each chat on its first send; the changes go
// through the other (b).
func TestSendMessage_ChecksOnEveryInstance(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			onB := servertest.NewClients(b, p)
			// A member removed from a group, and added back.
			admin, member := newPerson(t, a, p), newPerson(t, a, p)
			g := servertest.GroupChat(t, admin.c.Chat, admin.token, "cached", member.id).GetId()
			member.send(t, g, "cached now")
			if _, err := onB.Chat.RemoveParticipant(ctx, tok(admin, &parleyv1.RemoveParticipantRequest{ChatId: g, UserId: member.id})); err != nil {
				t.Fatalf("RemoveParticipant: %v", err)
			}
			servertest.WantCode(t, member.trySend(g, "removed"), connect.CodeNotFound)
			if _, err := onB.Chat.AddParticipants(ctx, tok(admin, &parleyv1.AddParticipantsRequest{ChatId: g, UserIds: []int32{member.id}})); err != nil {
				t.Fatalf("AddParticipants: %v", err)
			}
			member.send(t, g, "back")
			// Whom a send goes to follows too: a member added through b
			// hears, live, the next message sent through a.
			newcomer := newPerson(t, a, p)
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			stream, err := newcomer.c.Live.Subscribe(sctx, tok(newcomer, &parleyv1.SubscribeRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			for stream.Receive() && stream.Msg().GetEvent().GetReady() == nil {
			}
			if _, err := onB.Chat.AddParticipants(ctx, tok(admin, &parleyv1.AddParticipantsRequest{ChatId: g, UserIds: []int32{newcomer.id}})); err != nil {
				t.Fatalf("AddParticipants: %v", err)
			}
			welcome := admin.send(t, g, "welcome")
			for {
				if !stream.Receive() {
					t.Fatalf("the newcomer's stream ended before the message sent after it joined: %v", stream.Err())
				}
				if m := stream.Msg().GetEvent().GetMessageCreated().GetMessage(); m.GetId() == welcome.GetId() {
					break
				}
			}
			// A member that leaves by itself.
			member.send(t, g, "cached again")
			if _, err := onB.Chat.LeaveChat(ctx, tok(member, &parleyv1.LeaveChatRequest{ChatId: g})); err != nil {
				t.Fatalf("LeaveChat: %v", err)
			}
			servertest.WantCode(t, member.trySend(g, "left"), connect.CodeNotFound)

			// A block and an unblock in a private chat.
			alice, bob := newPerson(t, a, p), newPerson(t, a, p)
			private := alice.startChat(t, bob).GetId()
			bob.send(t, private, "accepted")
			alice.send(t, private, "cached now")
			if _, err := onB.Privacy.BlockUser(ctx, tok(bob, &parleyv1.BlockUserRequest{UserId: alice.id})); err != nil {
				t.Fatalf("BlockUser: %v", err)
			}
			servertest.WantCode(t, alice.trySend(private, "blocked"), connect.CodePermissionDenied)
			bob.send(t, private, "the blocker still sends")
			if _, err := onB.Privacy.UnblockUser(ctx, tok(bob, &parleyv1.UnblockUserRequest{UserId: alice.id})); err != nil {
				t.Fatalf("UnblockUser: %v", err)
			}
			alice.send(t, private, "unblocked")

			// A request declined.
			carol, dave := newPerson(t, a, p), newPerson(t, a, p)
			request := carol.startChat(t, dave).GetId()
			carol.send(t, request, "cached now")
			if _, err := onB.Chat.DeclineChatRequest(ctx, tok(dave, &parleyv1.DeclineChatRequestRequest{ChatId: request})); err != nil {
				t.Fatalf("DeclineChatRequest: %v", err)
			}
			servertest.WantCode(t, carol.trySend(request, "declined"), connect.CodePermissionDenied)

			// Nothing refused was stored.
			for _, c := range []struct {
				who    *person
				chatID string
				want   []string
			}{
				{admin, g, []string{"cached now", "back", "welcome", "cached again"}},
				{bob, private, []string{"accepted", "cached now", "the blocker still sends", "unblocked"}},
				{carol, request, []string{"cached now"}},
			} {
				ms, err := servertest.ListMessagesAfter(c.who.c.Message, c.who.token, c.chatID, 0)
				if err != nil {
					t.Fatalf("ListMessages: %v", err)
				}
				var got []string
				for _, m := range ms {
					got = append(got, m.GetText())
				}
				if len(got) != len(c.want) {
					t.Fatalf("chat %s holds %q, want %q", c.chatID, got, c.want)
				}
				for i := range got {
					if got[i] != c.want[i] {
						t.Fatalf("chat %s holds %q, want %q", c.chatID, got, c.want)
					}
				}
			}
		})
	}
}

// TestSendMessage_ChangeThatDied: a change of a chat that began and never
// ended (its instance died while writing) keeps sends off the cache: they
// are judged by the chat as the store holds it, until the change's
// registration expires. The change is made by hand, as the dying
// instance left it: registered and a new version set in Redis, the
// member taken out in MongoDB.
func TestSendMessage_ChangeThatDied(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	admin, member, g, id := groupOfTwo(t, srv, "dies")
	member.send(t, g, "cached now")

	prefix := servertest.SharedStores(t).RedisPrefix + "chat:{" + g + "}:"
	rdb := srv.App.Redis()
	until := time.Now().Add(time.Hour).UnixMilli()
	if err := rdb.ZAdd(ctx, prefix+"changing", redis.Z{Score: float64(until), Member: "died"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, prefix+"ver", "set by the change that died", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Before the write lands, sends pass, and must not cache what they
	// read.
	member.send(t, g, "during the change")
	_, err := srv.App.Mongo().Collection("chats").UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "participants", Value: bson.A{bson.D{{Key: "user_id", Value: admin.id}, {Key: "role", Value: "admin"}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	servertest.WantCode(t, member.trySend(g, "after the write"), connect.CodeNotFound)
	admin.send(t, g, "the admin still sends")
	// Once the registration is gone, sends cache the chat again, as it is.
	if err := rdb.Del(ctx, prefix+"changing").Err(); err != nil {
		t.Fatal(err)
	}
	servertest.WantCode(t, member.trySend(g, "still out"), connect.CodeNotFound)
	admin.send(t, g, "cached again")
	ms, err := servertest.ListMessagesAfter(admin.c.Message, admin.token, g, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 4 {
		t.Errorf("the chat holds %d messages, want 4 (two before the write, two by the admin)", len(ms))
	}
}

// TestSendMessage_SentSeqOfMembersOnly: the chat keeps what each member
// sent (its positions are at least that) for its members only, so the
// field stays within the group's size: one who leaves takes its entry
// along.
func TestSendMessage_SentSeqOfMembersOnly(t *testing.T) {
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" {
		t.Skip("sentSeq is the document engine's path: set PARLEY_TEST_MONGO_URI (FerretDB 1.x keeps the sender's positions in the positions collection)")
	}
	srv := servertest.New(t)
	ctx := context.Background()
	admin, member, g, id := groupOfTwo(t, srv, "sent")
	admin.send(t, g, "one")
	sent := member.send(t, g, "two").GetSeq()
	sentSeq := func() map[string]int64 {
		var doc struct {
			SentSeq map[string]int64 `bson:"sentSeq"`
		}
		if err := srv.App.Mongo().Collection("chats").FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
			t.Fatal(err)
		}
		return doc.SentSeq
	}
	if got := sentSeq()[fmt.Sprint(member.id)]; got != sent {
		t.Fatalf("the chat holds the member's sent seq %d, want %d", got, sent)
	}
	if _, err := member.c.Chat.LeaveChat(ctx, tok(member, &parleyv1.LeaveChatRequest{ChatId: g})); err != nil {
		t.Fatalf("LeaveChat: %v", err)
	}
	got := sentSeq()
	if _, ok := got[fmt.Sprint(member.id)]; ok || len(got) != 1 {
		t.Errorf("after the member left the chat holds sent seqs %v, want the admin's alone", got)
	}
}

// TestSendMessage_VersionLost: should Redis lose a chat's version (a
// restart without persistence, an eviction), the changes made after that
// still reach the entries cached before: a version is a random token,
// never one an entry could hold from before.
func TestSendMessage_VersionLost(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[0]
	onB := servertest.NewClients(b, p)
	admin, member, other := newPerson(t, a, p), newPerson(t, a, p), newPerson(t, a, p)
	g := servertest.GroupChat(t, admin.c.Chat, admin.token, "lost", member.id).GetId()
	// A change first, before any send read the version.
	if _, err := onB.Chat.AddParticipants(ctx, tok(admin, &parleyv1.AddParticipantsRequest{ChatId: g, UserIds: []int32{other.id}})); err != nil {
		t.Fatalf("AddParticipants: %v", err)
	}
	member.send(t, g, "cached now")
	rdb := a.App.Redis()
	prefix := servertest.SharedStores(t).RedisPrefix + "chat:{" + g + "}:"
	if err := rdb.Del(ctx, prefix+"ver", prefix+"changing").Err(); err != nil {
		t.Fatal(err)
	}
	// One change, on a Redis that forgot the first: counted from nothing
	// again, its version would be the one the entry holds.
	if _, err := onB.Chat.RemoveParticipant(ctx, tok(admin, &parleyv1.RemoveParticipantRequest{ChatId: g, UserId: member.id})); err != nil {
		t.Fatalf("RemoveParticipant: %v", err)
	}
	servertest.WantCode(t, member.trySend(g, "removed"), connect.CodeNotFound)
}

// groupOfTwo makes a group of an admin and a member on srv (Connect), and
// returns them with the group's id, as text and as MongoDB's.
func groupOfTwo(t *testing.T, srv *servertest.Server, name string) (admin, member *person, chatID string, id bson.ObjectID) {
	t.Helper()
	p := servertest.Protocols[0]
	admin, member = newPerson(t, srv, p), newPerson(t, srv, p)
	chatID = servertest.GroupChat(t, admin.c.Chat, admin.token, name, member.id).GetId()
	id, err := bson.ObjectIDFromHex(chatID)
	if err != nil {
		t.Fatal(err)
	}
	return admin, member, chatID, id
}

// TestSendMessage_RepeatedBlock: blocking a user already blocked changes
// nothing, and leaves no change registered behind it: once the block is
// lifted, sends to the pair's chat are answered from the cache again at
// once (a change registered until it expires would make every send read
// the chat for 30 s).
func TestSendMessage_RepeatedBlock(t *testing.T) {
	calls := &servertest.StoreCalls{}
	srv := servertest.New(t, servertest.WithStoreCalls(calls))
	p := servertest.Protocols[0]
	alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
	chatID := alice.startChat(t, bob).GetId()
	bob.send(t, chatID, "accepted")
	findsPerSend := func() int {
		t.Helper()
		alice.send(t, chatID, "loads the chat, if need be")
		calls.Reset()
		alice.send(t, chatID, "counted")
		return calls.Of(parleyv1connect.MessageServiceSendMessageProcedure).Mongo["find"]
	}
	cached := findsPerSend()
	if cached != 0 {
		t.Fatalf("a send to a cached chat makes %d finds, want 0", cached)
	}
	bob.block(t, alice)
	bob.block(t, alice)
	servertest.WantCode(t, alice.trySend(chatID, "blocked"), connect.CodePermissionDenied)
	if _, err := bob.c.Privacy.UnblockUser(context.Background(), tok(bob, &parleyv1.UnblockUserRequest{UserId: alice.id})); err != nil {
		t.Fatal(err)
	}
	if got := findsPerSend(); got != cached {
		t.Errorf("a send after a repeated block and its lifting makes %d finds, want %d as before: the chat is not cached", got, cached)
	}
}
